import assert from "node:assert/strict";
import { summarizeProfile } from "./cpu_profile.ts";

Deno.test("profile summary: self time per function and module, busiest first", () => {
  const frame = (functionName: string, url = "", lineNumber = 0) => ({ functionName, url, lineNumber });
  const s = summarizeProfile({
    nodes: [
      { id: 1, callFrame: frame("(idle)") },
      { id: 2, callFrame: frame("sum", "file:///work/main/core/netstack/header/checksum.ts", 14) },
      { id: 3, callFrame: frame("", "") },
    ],
    samples: [1, 2, 2, 2, 3],
    timeDeltas: [1, 1, 1, 1, 1],
    startTime: 0,
    endTime: 5,
  });
  assert.equal(s.samples, 5);
  assert.deepEqual(s.functions[0], { name: "sum core/netstack/header/checksum.ts:15", pct: 60 });
  assert.deepEqual(s.modules.map((m) => m.name), ["core/netstack/header/checksum.ts", "(idle)", "(native, unnamed)"]);
});
