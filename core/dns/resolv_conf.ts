/** Parses /etc/resolv.conf: nameservers, search domains and ndots. */

/** What tel needs from resolv.conf. */
export interface ResolvConf {
  nameservers: string[];
  search: string[];
  ndots: number;
}

/** Parses resolv.conf text; unknown lines and comments are ignored, as the libc resolver does. */
export function parseResolvConf(text: string): ResolvConf {
  const out: ResolvConf = { nameservers: [], search: [], ndots: 1 };
  for (const raw of text.split("\n")) {
    const line = raw.replace(/[#;].*$/, "").trim();
    if (!line) continue;
    const [key, ...rest] = line.split(/\s+/);
    if (key === "nameserver" && rest[0]) out.nameservers.push(rest[0].replace(/%.*$/, ""));
    else if (key === "search" || key === "domain") {
      out.search = rest.map((d) => d.replace(/^\.+|\.+$/g, "")).filter((d) => d !== "");
    } else if (key === "options") {
      for (const o of rest) {
        const m = /^ndots:(\d+)$/.exec(o);
        if (m) out.ndots = Math.min(15, Number(m[1]));
      }
    }
  }
  return out;
}
