/** Installs the Debian tools the lab tests and the demo use, when they are missing and we are root with apt-get. */

/** Command → Debian package that provides it. */
export const TOOLS: Record<string, string> = {
  ip: "iproute2",
  tc: "iproute2",
  iptables: "iptables",
  ip6tables: "iptables",
  curl: "curl",
  dig: "dnsutils",
  nc: "netcat-openbsd",
  openssl: "openssl",
  ping: "iputils-ping",
};

async function has(cmd: string): Promise<boolean> {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/sbin", "/sbin"])) {
    try {
      if ((await Deno.stat(`${dir}/${cmd}`)).isFile) return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

/** Missing packages for the given tools. */
export async function missingPackages(tools: Record<string, string> = TOOLS): Promise<string[]> {
  const missing = new Set<string>();
  for (const [cmd, pkg] of Object.entries(tools)) if (!(await has(cmd))) missing.add(pkg);
  return [...missing].sort();
}

/** Installs what is missing; returns a reason when it cannot. */
export async function ensureTools(tools: Record<string, string> = TOOLS): Promise<string | undefined> {
  const pkgs = await missingPackages(tools);
  if (pkgs.length === 0) return undefined;
  if (Deno.build.os !== "linux" || Deno.uid() !== 0 || !(await has("apt-get"))) {
    return `missing ${pkgs.join(", ")} and cannot install them (needs root and apt-get)`;
  }
  console.error(`installing ${pkgs.join(" ")} with apt-get …`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  const upd = await new Deno.Command("apt-get", { args: ["update", "-qq"], env, stdout: "null" }).output();
  if (upd.code !== 0) return "apt-get update failed";
  const inst = await new Deno.Command("apt-get", {
    args: ["install", "-y", "-qq", "--no-install-recommends", ...pkgs],
    env,
    stdout: "null",
  }).output();
  return inst.code === 0 ? undefined : `apt-get install ${pkgs.join(" ")} failed`;
}

if (import.meta.main) {
  const why = await ensureTools();
  if (why) console.error(`warning: ${why}; tests that need them will be skipped`);
}
