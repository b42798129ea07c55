/**
 * The config file: YAML parsed and checked against the schema, every error naming the file, the line and the key.
 * Apart from config.ts (the Config type, defaults, paths) so that a process that reads no config file never loads the
 * yaml parser: the CLI imports this module when a command asks for its config, the daemon when a connect sends one.
 */

import YAML from "yaml";
import { TelError } from "./errors.ts";
import type { Level } from "./log.ts";
import { type Config, configPath, defaultConfig, parseDuration } from "./config.ts";
import { Cidr, IpAddr, notADnsServer } from "./subnet/mod.ts";

type Kind = "string" | "string[]" | "duration" | "level" | "dnsServer" | "cidr[]" | "suffix[]";
type Schema = { [key: string]: Kind | Schema };

const SCHEMA: Schema = {
  logLevel: "level",
  resolver: "string",
  dns: {
    includeSuffixes: "suffix[]",
    excludeSuffixes: "suffix[]",
    lookupTimeout: "duration",
    ttl: "duration",
    localIP: "dnsServer",
  },
  routing: { alsoProxy: "cidr[]", neverProxy: "cidr[]", allowConflictingSubnets: "cidr[]" },
  timeouts: { probe: "duration", connect: "duration" },
};

/** A name suffix as dns.includeSuffixes/excludeSuffixes take it: ".com", "corp.example.com", "svc.cluster.local." */
const DNS_SUFFIX =
  /^\.?[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/;

/** Why `text` is not a CIDR (the address and prefix parsed for real, as the daemon will), or undefined. */
function cidrProblem(text: string): string | undefined {
  if (!text.includes("/")) return "expected a CIDR like 10.0.0.0/8";
  try {
    Cidr.parse(text, "config");
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

/** Parses and validates config text; every error names the file, the line and the key. */
export function parseConfig(text: string, source: string): Config {
  const lc = new YAML.LineCounter();
  const doc = YAML.parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const pos = lc.linePos(e.pos[0]);
    if (e.code === "MULTIPLE_DOCS") {
      throw new TelError("config", `${source}:${pos.line}: a second YAML document starts here; the config is one`, {
        hint: "remove the '---' line and merge the documents' keys into one mapping",
      });
    }
    throw new TelError("config", `${source}:${pos.line}: invalid YAML: ${e.message.split("\n")[0]}`, {
      hint: "fix the YAML syntax (indentation, colons, quotes)",
    });
  }
  const cfg = defaultConfig();
  cfg.source = source;
  const root = doc.contents;
  if (root === null || (YAML.isScalar(root) && (root.value === null || root.value === ""))) return cfg;
  if (!YAML.isMap(root)) {
    throw new TelError("config", `${source}:1: the config must be a mapping of keys`, {
      hint: "see docs/config.md for the keys",
    });
  }
  const values: Record<string, unknown> = {};
  walk(root, SCHEMA, "", { source, lc, doc }, values);
  apply(cfg, values);
  return cfg;
}

function lineOf(node: YAML.Node | YAML.Pair | null | undefined, lc: YAML.LineCounter): number {
  const range = (node as { range?: [number, number, number] } | null)?.range;
  return range ? lc.linePos(range[0]).line : 1;
}

/** The file a walk reads: its name for messages, its lines, and the document its aliases (`*name`) point into. */
interface Source {
  source: string;
  lc: YAML.LineCounter;
  doc: YAML.Document;
}

function walk(map: YAML.YAMLMap, schema: Schema, prefix: string, src: Source, out: Record<string, unknown>): void {
  const { source, lc } = src;
  for (const pair of map.items) {
    const keyNode = pair.key as YAML.Node;
    const key = YAML.isScalar(keyNode) ? String(keyNode.value) : String(keyNode);
    const path = prefix ? `${prefix}.${key}` : key;
    const line = lineOf(keyNode, lc);
    const kind = schema[key];
    if (kind === undefined) {
      const known = Object.keys(schema).map((k) => (prefix ? `${prefix}.${k}` : k));
      throw new TelError("config", `${source}:${line}: unknown key "${path}"`, {
        hint: `known keys here: ${known.join(", ")}`,
      });
    }
    const written = pair.value as YAML.Node | null;
    // an alias stands for the node its anchor (&name) marks; its line stays the alias's own
    const valueNode = YAML.isAlias(written) ? written.resolve(src.doc) ?? null : written;
    const fail = (expected: string): never => {
      throw new TelError("config", `${source}:${lineOf(written, lc) || line}: ${path}: ${expected}`, {
        hint: "see docs/config.md for the keys and their types",
      });
    };
    if (typeof kind === "object") {
      if (valueNode === null || (YAML.isScalar(valueNode) && valueNode.value === null)) continue;
      if (!YAML.isMap(valueNode)) fail("expected a mapping");
      walk(valueNode as YAML.YAMLMap, kind, path, src, out);
      continue;
    }
    const value = valueNode === null ? null : valueNode.toJS(src.doc);
    out[path] = checkValue(kind, value, fail);
  }
}

function checkValue(kind: Kind, value: unknown, fail: (expected: string) => never): unknown {
  switch (kind) {
    case "string":
      if (typeof value !== "string" || value === "") fail("expected a non-empty string");
      return value;
    case "level":
      if (typeof value !== "string" || !["debug", "info", "warn", "error", "off"].includes(value)) {
        fail("expected one of debug, info, warn, error, off");
      }
      return value;
    case "duration": {
      const ms = parseDuration(value);
      if (ms === undefined) {
        const got = typeof value === "number" ? String(value) : JSON.stringify(value);
        fail(`expected a duration above 0 and at most 24 days, like 1s or 500ms, got ${got}`);
      }
      return ms;
    }
    case "dnsServer": {
      if (typeof value !== "string") fail(`expected an IP address, got ${JSON.stringify(value)}`);
      let ip: IpAddr;
      try {
        ip = IpAddr.parse(value as string, "config");
      } catch (e) {
        return fail(`expected an IP address: ${(e as Error).message}`);
      }
      const why = notADnsServer(ip);
      return why ? fail(`expected a DNS server's address: ${why}`) : ip.toString();
    }
    case "cidr[]":
    case "suffix[]": {
      if (!Array.isArray(value)) fail(`expected a list, got ${JSON.stringify(value)}`);
      const list = value as unknown[];
      list.forEach((item, i) => {
        if (typeof item !== "string") fail(`item ${i + 1}: expected a string, got ${JSON.stringify(item)}`);
        if (kind === "cidr[]") {
          const why = cidrProblem(item as string);
          if (why) fail(`item ${i + 1}: ${why}`);
        } else if (!DNS_SUFFIX.test((item as string).trim())) {
          fail(`item ${i + 1}: ${JSON.stringify(item)} is not a DNS suffix (labels of letters, digits, - and _)`);
        }
      });
      return list;
    }
    case "string[]":
      if (!Array.isArray(value) || value.some((x) => typeof x !== "string")) fail("expected a list of strings");
      return value;
  }
}

function apply(cfg: Config, v: Record<string, unknown>): void {
  const s = (k: string) => v[k] as string | undefined;
  const l = (k: string) => v[k] as string[] | undefined;
  const n = (k: string) => v[k] as number | undefined;
  cfg.logLevel = s("logLevel") as Level | undefined;
  cfg.resolver = s("resolver");
  cfg.dns.includeSuffixes = l("dns.includeSuffixes") ?? cfg.dns.includeSuffixes;
  cfg.dns.excludeSuffixes = l("dns.excludeSuffixes") ?? cfg.dns.excludeSuffixes;
  cfg.dns.lookupTimeoutMs = n("dns.lookupTimeout") ?? cfg.dns.lookupTimeoutMs;
  cfg.dns.ttlSeconds = v["dns.ttl"] !== undefined ? Math.max(1, Math.round(n("dns.ttl")! / 1000)) : cfg.dns.ttlSeconds;
  cfg.dns.localIP = s("dns.localIP");
  cfg.routing.alsoProxy = l("routing.alsoProxy") ?? [];
  cfg.routing.neverProxy = l("routing.neverProxy") ?? [];
  cfg.routing.allowConflictingSubnets = l("routing.allowConflictingSubnets") ?? [];
  cfg.timeouts.probeMs = n("timeouts.probe") ?? cfg.timeouts.probeMs;
  cfg.timeouts.connectMs = n("timeouts.connect") ?? cfg.timeouts.connectMs;
}

/** Reads the config: a missing default file means defaults; a missing named file is an error. */
export async function loadConfig(flag?: string): Promise<Config> {
  const { path, explicit } = configPath(flag);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound && !explicit) return defaultConfig();
    if (e instanceof Deno.errors.NotFound) {
      throw new TelError("config", `config file ${path} does not exist`, {
        hint: "check the path given with --config or TEL_CONFIG",
      });
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new TelError("config", `config file ${path} is a directory`, {
        hint: "give the YAML file itself with --config or TEL_CONFIG (config.yml)",
      });
    }
    throw new TelError("config", `cannot read config file ${path}: ${e instanceof Error ? e.message : e}`, {
      hint: "check the file's permissions",
    });
  }
  return parseConfig(text, path);
}
