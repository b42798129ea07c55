/** Regenerates proto/gen/ from proto/*.proto with Debian's protoc and the ts-proto plugin (run: `deno task proto`). */

import { TelError } from "../core/errors.ts";

const PROTO_DIR = new URL(".", import.meta.url).pathname;
const GEN_DIR = new URL("./gen/", import.meta.url).pathname;
const PLUGIN_JS = new URL("../node_modules/ts-proto/build/src/plugin.js", import.meta.url).pathname;

/** ts-proto options: grpc-js service definitions, Uint8Array bytes, `{$case, value}` oneofs, no JSON methods. */
export const TS_PROTO_OPTIONS = [
  "outputServices=grpc-js",
  "esModuleInterop=true",
  "oneof=unions-value",
  "env=browser",
  "useOptionals=messages",
  "outputJsonMethods=false",
];

/**
 * Leaves grpc-js out of what importing the generated module loads: ts-proto's client constructors
 * (`export const ManagerClient = makeGenericClientConstructor(...)`) are its only values from grpc-js, so they go (the
 * code that makes clients calls makeGenericClientConstructor with the exported service definition) and the grpc-js
 * import becomes type-only. The daemon, which calls the manager without grpc-js, then never loads it (~7 MiB of RSS).
 */
export function withoutClientConstructors(source: string): string {
  const noCtors = source.replaceAll(
    /\nexport const \w+Client = makeGenericClientConstructor\([^]*?\n\};\n/g,
    "\n",
  );
  return noCtors.replace(/import \{([^}]*)\} from "@grpc\/grpc-js";/, (_all, names: string) => {
    const kept = names.split(",").map((n) => n.trim().replace(/^type /, "")).filter((n) =>
      n && n !== "makeGenericClientConstructor"
    );
    return `import type { ${kept.join(", ")} } from "@grpc/grpc-js";`;
  });
}

/**
 * Makes ts-proto's output fit Deno: imports Buffer from node:buffer and wraps the encoder's bytes instead of copying
 * them (`Buffer.from(u8)` copies every 64 KiB tunnel frame).
 */
export function postProcess(source: string): string {
  const typed = withoutClientConstructors(source);
  const wrapped = typed.replaceAll(
    /Buffer\.from\((\w+)\.encode\(value\)\.finish\(\)\)/g,
    "asBuffer($1.encode(value).finish())",
  );
  const header = [
    'import { Buffer } from "node:buffer";',
    "",
    "function asBuffer(bytes: Uint8Array): Buffer {",
    "  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);",
    "}",
    "",
  ].join("\n");
  const firstImport = wrapped.indexOf("import ");
  return wrapped.slice(0, firstImport) + header + wrapped.slice(firstImport);
}

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "inherit", stderr: "inherit" }).output().catch((err) => {
    throw new TelError("platform", `${cmd}: ${err instanceof Error ? err.message : String(err)}`, {
      hint: "install it with: apt-get install -y protobuf-compiler",
      cause: err,
    });
  });
  if (!out.success) throw new TelError("bug", `${cmd} ${args.join(" ")} exited with ${out.code}`);
}

/** Runs protoc over every .proto in proto/ and writes post-processed TS into proto/gen/. */
export async function generate(): Promise<string[]> {
  const protos: string[] = [];
  for await (const e of Deno.readDir(PROTO_DIR)) if (e.isFile && e.name.endsWith(".proto")) protos.push(e.name);
  protos.sort();
  const tmp = await Deno.makeTempDir({ prefix: "tel-proto-" });
  try {
    // protoc runs plugins as executables; this one runs ts-proto under the same Deno instead of node.
    const plugin = `${tmp}/protoc-gen-ts_proto`;
    await Deno.writeTextFile(plugin, `#!/bin/sh\nexec "${Deno.execPath()}" run -A --quiet "${PLUGIN_JS}"\n`);
    await Deno.chmod(plugin, 0o755);
    const outDir = `${tmp}/out`;
    await Deno.mkdir(outDir);
    await run("protoc", [
      `--plugin=protoc-gen-ts_proto=${plugin}`,
      `--ts_proto_out=${outDir}`,
      `--ts_proto_opt=${TS_PROTO_OPTIONS.join(",")}`,
      `-I${PROTO_DIR}`,
      ...protos.map((p) => `${PROTO_DIR}${p}`),
    ]);
    await Deno.mkdir(GEN_DIR, { recursive: true });
    const written: string[] = [];
    for await (const e of Deno.readDir(outDir)) {
      if (!e.isFile) continue;
      const text = postProcess(await Deno.readTextFile(`${outDir}/${e.name}`));
      await Deno.writeTextFile(`${GEN_DIR}${e.name}`, text);
      written.push(`proto/gen/${e.name}`);
    }
    return written.sort();
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

if (import.meta.main) {
  const files = await generate();
  for (const f of files) console.info(`wrote ${f}`);
}
