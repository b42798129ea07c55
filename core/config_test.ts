import assert from "node:assert/strict";
import { configDir, configPath, defaultConfig, parseDuration } from "./config.ts";
import { loadConfig, parseConfig } from "./config_file.ts";
import { TelError } from "./errors.ts";

function configError(text: string): TelError {
  try {
    parseConfig(text, "/etc/tel.yml");
  } catch (e) {
    assert.ok(e instanceof TelError, `expected a TelError, got ${e}`);
    assert.equal(e.category, "config");
    return e;
  }
  assert.fail("expected a config error");
}

Deno.test("an empty file gives the defaults", () => {
  const c = parseConfig("", "x.yml");
  assert.deepEqual({ ...c, source: undefined }, { ...defaultConfig(), source: undefined });
});

Deno.test("every documented key is read", () => {
  const c = parseConfig(
    `logLevel: debug
resolver: resolver-iptables
dns:
  includeSuffixes: [.example]
  excludeSuffixes: []
  lookupTimeout: 500ms
  ttl: 10s
  localIP: 10.0.0.53
routing:
  alsoProxy: [10.1.0.0/16]
  neverProxy: ["10.1.2.0/24", "fd00:7e1::/64"]
  allowConflictingSubnets: [10.9.0.0/16]
timeouts:
  probe: 2s
  connect: 1m
`,
    "x.yml",
  );
  assert.equal(c.logLevel, "debug");
  assert.equal(c.resolver, "resolver-iptables");
  assert.deepEqual(c.dns, {
    includeSuffixes: [".example"],
    excludeSuffixes: [],
    lookupTimeoutMs: 500,
    ttlSeconds: 10,
    localIP: "10.0.0.53",
  });
  assert.deepEqual(c.routing, {
    alsoProxy: ["10.1.0.0/16"],
    neverProxy: ["10.1.2.0/24", "fd00:7e1::/64"],
    allowConflictingSubnets: ["10.9.0.0/16"],
  });
  assert.deepEqual(c.timeouts, { probeMs: 2000, connectMs: 60000 });
});

Deno.test("an unknown key is an error naming the key, the file and the line", () => {
  const e = configError("dns:\n  lookupTimeout: 1s\n  includeSufixes: [a]\n");
  assert.equal(e.message, '/etc/tel.yml:3: unknown key "dns.includeSufixes"');
  assert.match(e.hint ?? "", /dns\.includeSuffixes/);
});

Deno.test("a wrong type is an error naming the key, the file and the line", () => {
  assert.match(
    configError("routing:\n\n  alsoProxy: 10.0.0.0/8\n").message,
    /^\/etc\/tel\.yml:3: routing\.alsoProxy: expected a list/,
  );
  assert.match(
    configError("dns:\n  lookupTimeout: soon\n").message,
    /^\/etc\/tel\.yml:2: dns\.lookupTimeout: expected a duration/,
  );
  assert.match(configError("dns: 5\n").message, /^\/etc\/tel\.yml:1: dns: expected a mapping/);
  assert.match(configError("logLevel: loud\n").message, /^\/etc\/tel\.yml:1: logLevel: expected one of/);
  assert.match(
    configError("routing:\n  neverProxy:\n    - 10.0.0.0/8\n    - 10.0.0.0/33\n").message,
    /^\/etc\/tel\.yml:3: routing\.neverProxy: item 2: "10\.0\.0\.0\/33": prefix longer than 32/,
  );
});

Deno.test("addresses and CIDRs in the config are parsed as the daemon parses them, naming the line", () => {
  // each passed the old look-alike check and failed only at connect, blamed on the command-line flag
  assert.match(
    configError("routing:\n  neverProxy: ['::::/64']\n").message,
    /^\/etc\/tel\.yml:2: routing\.neverProxy: item 1: "::::": "::" may appear only once/,
  );
  assert.match(
    configError("routing:\n  alsoProxy: [10.0.0/8]\n").message,
    /^\/etc\/tel\.yml:2: routing\.alsoProxy: item 1: "10\.0\.0": /,
  );
  assert.match(
    configError("routing:\n  alsoProxy: [10.0.0.1]\n").message,
    /item 1: expected a CIDR like 10\.0\.0\.0\/8/,
  );
  assert.match(
    configError("dns:\n  localIP: ':'\n").message,
    /^\/etc\/tel\.yml:2: dns\.localIP: expected an IP address: /,
  );
  assert.match(configError("dns:\n  localIP: 10.0.0.256\n").message, /dns\.localIP: expected an IP address: /);
  assert.match(
    configError("dns:\n  localIP: 0.0.0.0\n").message,
    /^\/etc\/tel\.yml:2: dns\.localIP: expected a DNS server's address: an unspecified address is no DNS server$/,
  );
  for (const bad of ["", "..", "a b", "-x.com"]) {
    assert.match(
      configError(`dns:\n  excludeSuffixes: [.com, ${JSON.stringify(bad)}]\n`).message,
      /^\/etc\/tel\.yml:2: dns\.excludeSuffixes: item 2: .* is not a DNS suffix/,
      bad,
    );
  }
  assert.deepEqual(
    parseConfig("dns:\n  includeSuffixes: [.corp.example.com, svc.cluster.local., _tcp.x]\n", "c").dns.includeSuffixes,
    [".corp.example.com", "svc.cluster.local.", "_tcp.x"],
  );
  // the address is kept in its canonical form
  const cfg = parseConfig("dns:\n  localIP: 'fd00:0:0::53'\nrouting:\n  alsoProxy: [fd00:7e1::/48]\n", "/etc/tel.yml");
  assert.equal(cfg.dns.localIP, "fd00::53");
  assert.deepEqual(cfg.routing.alsoProxy, ["fd00:7e1::/48"]);
});

Deno.test("broken YAML is an error with the line", () => {
  assert.match(configError("dns:\n  lookupTimeout: [1s\n").message, /^\/etc\/tel\.yml:\d+: invalid YAML/);
  assert.match(configError("a: 1\na: 2\n").message, /^\/etc\/tel\.yml:2: invalid YAML/);
  assert.match(configError("- 1\n- 2\n").message, /must be a mapping/);
  const two = configError("logLevel: info\n---\nlogLevel: debug\n");
  assert.match(two.message, /^\/etc\/tel\.yml:2: a second YAML document starts here; the config is one$/);
  assert.match(two.hint ?? "", /remove the '---' line/);
});

Deno.test("YAML anchors and aliases are read as what they point at", () => {
  const cfg = parseConfig(
    "timeouts: {probe: &t 3s, connect: *t}\n" +
      "routing:\n  alsoProxy: &nets [198.18.0.0/16, &one 10.9.0.0/16]\n  neverProxy: [*one]\n" +
      "  allowConflictingSubnets: *nets\n",
    "/etc/tel.yml",
  );
  assert.equal(cfg.timeouts.probeMs, 3000);
  assert.equal(cfg.timeouts.connectMs, 3000);
  assert.deepEqual(cfg.routing.alsoProxy, ["198.18.0.0/16", "10.9.0.0/16"]);
  assert.deepEqual(cfg.routing.neverProxy, ["10.9.0.0/16"]);
  assert.deepEqual(cfg.routing.allowConflictingSubnets, ["198.18.0.0/16", "10.9.0.0/16"]);
  const anchoredMap = parseConfig("timeouts: &t {connect: 5s}\n", "/etc/tel.yml");
  assert.equal(anchoredMap.timeouts.connectMs, 5000);
  // an alias's value is checked like any other, and the error names the alias's line
  assert.match(configError("logLevel: &l loud\ntimeouts:\n  connect: *l\n").message, /^\/etc\/tel\.yml:1: logLevel/);
  assert.match(
    configError("dns:\n  localIP: &x 1.2.3.4\ntimeouts:\n  connect: *x\n").message,
    /^\/etc\/tel\.yml:4: timeouts\.connect: expected a duration/,
  );
});

Deno.test("durations", () => {
  assert.equal(parseDuration("250ms"), 250);
  assert.equal(parseDuration("1.5s"), 1500);
  assert.equal(parseDuration("2m"), 120000);
  assert.equal(parseDuration(3), 3000);
  assert.equal(parseDuration("3 days"), undefined);
  assert.equal(parseDuration(-1), undefined);
  assert.equal(parseDuration("0s"), undefined);
  // a timer takes at most 2^31-1 ms; a longer one would fire at once
  assert.equal(parseDuration("596h"), 596 * 3_600_000);
  assert.equal(parseDuration("597h"), undefined);
  assert.equal(parseDuration(1e400), undefined);
  assert.match(configError("timeouts:\n  probe: 0\n").message, /timeouts\.probe: expected a duration above 0 .*got 0$/);
  assert.match(configError("timeouts:\n  probe: 999999h\n").message, /timeouts\.probe: .*got "999999h"$/);
  assert.match(configError("timeouts:\n  connect: 1e400\n").message, /timeouts\.connect: .*got Infinity$/);
});

Deno.test("the config file sits at each platform's usual place", () => {
  const env = (m: Record<string, string>) => (k: string) => m[k];
  assert.equal(configDir(env({ HOME: "/home/u" }), "linux"), "/home/u/.config/tel");
  assert.equal(configDir(env({ HOME: "/home/u", XDG_CONFIG_HOME: "/x" }), "linux"), "/x/tel");
  assert.equal(configDir(env({ HOME: "/Users/u" }), "darwin"), "/Users/u/Library/Application Support/tel");
  assert.equal(
    configDir(env({ APPDATA: "C:\\Users\\u\\AppData\\Roaming" }), "windows"),
    "C:\\Users\\u\\AppData\\Roaming\\tel",
  );
  assert.deepEqual(configPath(undefined, env({ HOME: "/h", TEL_CONFIG: "/t.yml" }), "linux"), {
    path: "/t.yml",
    explicit: true,
  });
  assert.deepEqual(configPath("/f.yml", env({ TEL_CONFIG: "/t.yml" }), "linux"), { path: "/f.yml", explicit: true });
  assert.deepEqual(configPath(undefined, env({ HOME: "/h" }), "linux"), {
    path: "/h/.config/tel/config.yml",
    explicit: false,
  });
});

Deno.test("a missing named config file is an error, a missing default one is not", async () => {
  await assert.rejects(loadConfig("/does/not/exist.yml"), /config file \/does\/not\/exist\.yml does not exist/);
  await assert.rejects(loadConfig("/tmp"), /^TelError: config file \/tmp is a directory$/);
  const home = Deno.env.get("HOME");
  const dir = await Deno.makeTempDir();
  Deno.env.set("HOME", dir);
  Deno.env.delete("XDG_CONFIG_HOME");
  try {
    assert.equal((await loadConfig()).source, undefined);
  } finally {
    if (home !== undefined) Deno.env.set("HOME", home);
    await Deno.remove(dir, { recursive: true });
  }
});
