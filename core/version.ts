/** tel's own version, shown by `tel version` and sent to the manager. */
export const TEL_VERSION = "0.1.0";
