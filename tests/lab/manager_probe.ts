/**
 * A minimal manager client for lab tests, run inside a namespace: ArriveAsClient, optional LookupDNS, then
 * WatchClusterInfo, one JSON line per event on stdout.
 *
 * deno run -A tests/lab/manager_probe.ts --manager 198.19.255.2:8081 [--lookup echo.default.svc.cluster.local]
 *   [--max-seconds 30]
 *
 * Prints `SESSION {"sessionId":…}`, `DNS {"name":…,"rcode":…,"answers":[…]}` per lookup, `INFO {ClusterInfo}` per
 * WatchClusterInfo message, `ERROR {"message":…}` on failure. Exits on stdin EOF or after --max-seconds.
 */

import dnsPacket from "dns-packet";
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import type * as grpc from "@grpc/grpc-js";
import { createManagerClient } from "../../core/tunnel/mod.ts";
import type { ClientInfo, ClusterInfo, DNSRequest, DNSResponse, SessionInfo } from "../../proto/gen/tel.ts";

function unary<Req, Res>(
  fn: (req: Req, cb: (err: grpc.ServiceError | null, res: Res) => void) => unknown,
  req: Req,
): Promise<Res> {
  return new Promise((resolve, reject) => fn(req, (err, res) => (err ? reject(err) : resolve(res))));
}

/** Decodes the wire-form answer records of a DNSResponse into their data (addresses for A/AAAA). */
export function answerData(records: Uint8Array[]): string[] {
  return records.map((r) => {
    // each record is one RR: wrap it in a message to reuse dns-packet's decoder
    const head = Buffer.from([0, 0, 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0]);
    const msg = dnsPacket.decode(Buffer.concat([head, Buffer.from(r)]));
    return String(msg.answers?.[0] && "data" in msg.answers[0] ? msg.answers[0].data : "");
  });
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      manager: { type: "string", default: "198.19.255.2:8081" },
      lookup: { type: "string", multiple: true },
      "max-seconds": { type: "string", default: "30" },
    },
  });
  const say = (tag: string, o: unknown) => console.log(`${tag} ${JSON.stringify(o)}`);
  const client = createManagerClient(values.manager!);
  const deadline = setTimeout(() => Deno.exit(0), Number(values["max-seconds"]) * 1000);
  try {
    const s = await unary<ClientInfo, SessionInfo>(client.arriveAsClient.bind(client), {
      name: "lab-probe",
      namespace: "default",
      installId: "",
      version: "",
    });
    say("SESSION", s);
    for (const name of values.lookup ?? []) {
      const r = await unary<DNSRequest, DNSResponse>(client.lookupDns.bind(client), {
        session: { sessionId: s.sessionId },
        name,
        qtype: 1,
        id: 0,
      });
      say("DNS", { name, rcode: r.rcode, answers: answerData(r.records) });
    }
    const call = client.watchClusterInfo({ sessionId: s.sessionId });
    call.on("data", (info: ClusterInfo) => say("INFO", info));
    call.on("error", (err: Error) => say("ERROR", { message: err.message }));
    for await (const _ of Deno.stdin.readable) {
      // stay until the test closes stdin
    }
    call.cancel();
  } catch (err) {
    say("ERROR", { message: err instanceof Error ? err.message : String(err) });
    return 1;
  } finally {
    clearTimeout(deadline);
    client.close();
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main());
