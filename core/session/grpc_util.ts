/** Promise wrappers for grpc-js unary calls with a deadline. */

import type { CallOptions, Metadata, ServiceError } from "@grpc/grpc-js";

type UnaryFn<Req, Res> = (
  req: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  cb: (err: ServiceError | null, res: Res) => void,
) => unknown;

/** Calls a unary method of a grpc-js client and resolves with its response; rejects with the ServiceError. */
export function unary<Req, Res>(
  fn: UnaryFn<Req, Res>,
  thisArg: unknown,
  req: Req,
  metadata: Metadata,
  timeoutMs: number,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    fn.call(thisArg, req, metadata, { deadline: Date.now() + timeoutMs }, (err, res) => {
      if (err) reject(err);
      else resolve(res);
    });
  });
}
