/**
 * Run by memory_test.ts in a fresh process: releases its executable's pages ("now": at once; "governor": through a
 * governor's timer), then goes on working, and prints JSON with what the executable had resident before, right after
 * and after the work, and the work's results.
 */

import { readOnlyMappingsOf, releaseExecutablePages, startMemoryGovernor } from "./memory.ts";

const exe = Deno.realPathSync("/proc/self/exe");

/** The executable's read-only mappings now: resident kB of those without copies, and how many hold copies. */
function resident() {
  const maps = readOnlyMappingsOf(Deno.readTextFileSync("/proc/self/smaps"), exe);
  const clean = maps.filter((m) => m.anonymousKb === 0);
  return { kb: clean.reduce((n, m) => n + m.rssKb, 0), withCopies: maps.length - clean.length };
}

const before = resident();
let release: ReturnType<typeof releaseExecutablePages>;
if (Deno.args[0] === "governor") {
  const g = startMemoryGovernor({ releaseExecutableAfterMs: 1 });
  // bounded: a governor that cannot release (no glibc) reports nothing, and the test then fails instead of waiting
  for (let i = 0; i < 200 && g.stats.executableReleased === undefined; i++) await new Promise((r) => setTimeout(r, 5));
  release = { mappings: -1, bytes: g.stats.executableReleased ?? 0, skipped: -1 };
  g.stop();
} else {
  release = releaseExecutablePages();
}
const after = resident();

// work that runs through much of the runtime: module loading, crypto, text, Intl, JSON, timers
const { createHash } = await import("node:crypto");
const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode("tel")));
const work = {
  sha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
  md5: createHash("md5").update("tel").digest("hex"),
  date: new Intl.DateTimeFormat("en-US", { timeZone: "UTC" }).format(new Date(0)),
  json: JSON.stringify(JSON.parse('{"a":[1,2,{"b":"c"}]}')),
  upper: "straße".toUpperCase(),
};
await new Promise((r) => setTimeout(r, 20));
const later = resident();

console.log(JSON.stringify({ before, release, after, later, work }));
