import assert from "node:assert/strict";
import { TelError } from "../errors.ts";
import { type CommandSpec, helpText, parseFlags, suggest } from "./flags.ts";

const spec: CommandSpec = {
  name: "connect",
  summary: "Connect.",
  usage: "tel connect [flags]",
  flags: {
    namespace: { type: "string", short: "n", description: "namespace", valueName: "NS" },
    "also-proxy": { type: "string", multiple: true, description: "extra subnets", valueName: "CIDR" },
    output: { type: "string", description: "format", choices: ["text", "json"] },
    quiet: { type: "boolean", description: "less output" },
  },
};

function userError(argv: string[]): TelError {
  try {
    parseFlags(spec, argv);
  } catch (e) {
    assert.ok(e instanceof TelError);
    assert.equal(e.category, "user");
    assert.equal(e.exitCode, 2);
    return e;
  }
  assert.fail("expected an error");
}

Deno.test("flags parse into typed values, repeatable flags split on commas", () => {
  const { values } = parseFlags(spec, [
    "-n",
    "dev",
    "--also-proxy",
    "10.0.0.0/8,10.1.0.0/16",
    "--also-proxy=1.2.3.0/24",
  ]);
  assert.equal(values.namespace, "dev");
  assert.deepEqual(values["also-proxy"], ["10.0.0.0/8", "10.1.0.0/16", "1.2.3.0/24"]);
  assert.equal(values.quiet, undefined);
  // a short flag with "=", as kubectl takes it
  assert.equal(parseFlags(spec, ["-n=dev"]).values.namespace, "dev");
  assert.equal(parseFlags(spec, ["-n=a=b"]).values.namespace, "a=b");
});

Deno.test("an unknown flag names the word and suggests the nearest flag", () => {
  const e = userError(["--namespac", "x"]);
  assert.equal(e.message, "unknown flag --namespac for 'tel connect'");
  assert.match(e.hint ?? "", /did you mean --namespace\?/);
  assert.doesNotMatch(userError(["--zzzzzzzz"]).hint ?? "", /did you mean/);
});

Deno.test("a missing value, a value for a boolean and a bad choice are errors", () => {
  assert.equal(userError(["--namespace"]).message, "flag --namespace needs a value (NS)");
  assert.equal(userError(["-n"]).message, "flag --namespace needs a value (NS)");
  // a flag where the value should be: the value was forgotten, or it starts with a dash
  const short = userError(["-n", "--quiet"]);
  assert.equal(short.message, "flag -n (--namespace) needs a value (NS), and what follows it starts with a dash");
  assert.equal(short.hint, "write a value that starts with a dash as --namespace=-VALUE");
  assert.equal(
    userError(["--namespace", "-x"]).message,
    "flag --namespace needs a value (NS), and what follows it starts with a dash",
  );
  assert.equal(userError(["--quiet=yes"]).message, "flag --quiet takes no value");
  const empty = userError(["--namespace="]);
  assert.equal(empty.message, "flag --namespace has an empty value");
  assert.equal(empty.hint, "give NS, or leave the flag out for the default");
  assert.equal(userError(["-n", ""]).message, "flag --namespace has an empty value");
  const e = userError(["--output", "jsn"]);
  assert.equal(e.message, 'invalid value "jsn" for --output');
  assert.match(e.hint ?? "", /did you mean "json"/);
});

Deno.test("unexpected positional arguments are refused", () => {
  assert.equal(userError(["extra"]).message, "unexpected argument \"extra\" for 'tel connect'");
});

Deno.test("help lists every flag with its description", () => {
  const h = helpText(spec);
  for (const name of Object.keys(spec.flags)) assert.match(h, new RegExp(`--${name}`));
  assert.match(h, /--log-level LEVEL/);
  assert.match(h, /-n, --namespace NS {2,}namespace/);
});

Deno.test("suggestions stay close", () => {
  assert.equal(suggest("lst", ["list", "version"]), "list");
  assert.equal(suggest("xyzzy", ["list", "version"]), undefined);
  assert.equal(suggest("VERSION", ["list", "version"]), "version");
  assert.equal(suggest("nodepodcidrs", ["auto", "nodePodCIDRs", "coverPodIPs"]), "nodePodCIDRs");
});
