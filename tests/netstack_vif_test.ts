/** The Linux TUN VIF against the real kernel: device, MTU, addresses, routes, host route table, cleanup on close. */

import { deepStrictEqual, equal, match, ok, rejects, throws } from "node:assert/strict";
import { TelError } from "../core/errors.ts";
import { vifPlugin } from "../plugins/vif/mod.ts";
import { openTun, waitFromEnv } from "../plugins/vif/tun_linux.ts";
import { canUseNetns, labId, Netns } from "./lab/netns.ts";
import { fdsOpenOn } from "./lab/proc.ts";

const ignore = !(await canUseNetns());
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

Deno.test(
  "vif: open sets MTU and up; routes show in the host table; close removes device and routes",
  opts,
  async () => {
    const ns = await Netns.create("nt");
    try {
      const factory = await vifPlugin.create({ stateDir: "/tmp" });
      const name = `tl${labId()}`;
      const vif = await factory.open({ name, mtu: 65000, netns: ns.name });
      try {
        equal(vif.name, name);
        equal(vif.offload?.tsoMaxPacket !== undefined, true, "offloads are on by default");
        // a second open of the same name in that namespace (another daemon) is told as a device in use, not as
        // missing root
        const mod = new URL("../plugins/vif/mod.ts", import.meta.url).href;
        const second = await ns.run([
          Deno.execPath(),
          "eval",
          "--quiet",
          `
          const { vifPlugin } = await import("${mod}");
          const factory = await vifPlugin.create({ stateDir: "/tmp" });
          try { await factory.open({ name: "${name}" }); console.log("opened"); }
          catch (e) { console.log(JSON.stringify({ message: e.message, hint: e.hint })); }`,
        ]);
        const busy = JSON.parse(second.stdout);
        match(busy.message, /TUN device .* is in use by another process \(TUNSETIFF: errno 16, EBUSY\)/, second.stderr);
        match(busy.hint, /another tel daemon/);
        const link = JSON.parse(await ns.exec(["ip", "-j", "link", "show", name]))[0];
        equal(link.mtu, 65000);
        ok(link.flags.includes("UP"));
        await vif.addAddress("198.19.254.1/32");
        await vif.addRoute("198.18.0.0/16");
        await vif.addRoute("fd00:7e1::/48");
        const routes = await vif.hostRoutes();
        const mine = routes.filter((r) => r.device === name && !r.destination.startsWith("fe80:"));
        deepStrictEqual(mine.map((r) => r.destination).sort(), [
          "198.18.0.0/16",
          "fd00:7e1::/48",
        ]);
        await vif.removeRoute("198.18.0.0/16");
        ok(!(await vif.hostRoutes()).some((r) => r.destination === "198.18.0.0/16"));
        await rejects(
          vif.addRoute("not-a-cidr"),
          (e: unknown) => e instanceof TelError && /plugin\/vif: ip /.test(e.message),
        );
      } finally {
        await vif.close();
        await vif.close(); // safe twice
      }
      const after = await ns.run(["ip", "link", "show", name]);
      ok(after.code !== 0, "device is gone");
      ok(!(await ns.exec(["ip", "-6", "route"])).includes("fd00:7e1::/48"), "its routes are gone");
      await rejects(vif.readPackets(), TelError);
    } finally {
      await ns.close();
    }
  },
);

Deno.test("vif: without iproute2 on PATH, open fails with a TelError that says to install it", opts, async () => {
  // In a child process with an empty PATH, so no other test running in this process loses `ip`.
  const mod = new URL("../plugins/vif/mod.ts", import.meta.url).href;
  const code = `
    const { vifPlugin } = await import("${mod}");
    const factory = await vifPlugin.create({ stateDir: "/tmp" });
    try { await factory.open({ name: "tl${labId()}" }); console.log("opened"); }
    catch (e) { console.log(JSON.stringify({ name: e.name, message: e.message, hint: e.hint })); }`;
  const ns = await Netns.create("nt"); // the short-lived device appears there, not on the host
  try {
    const out = await ns.run(["env", "PATH=/nonexistent", "NO_COLOR=1", Deno.execPath(), "eval", "--quiet", code]);
    const err = JSON.parse(out.stdout);
    equal(err.name, "TelError", out.stderr);
    match(err.message, /^plugin\/vif: the `ip` command \(iproute2\) was not found/);
    match(err.hint, /install iproute2/);
  } finally {
    await ns.close();
  }
});

Deno.test(
  "vif: a burst of large and small packets queued at once reads back whole and in order, batch after batch",
  opts,
  async () => {
    const ns = await Netns.create("nb");
    try {
      const factory = await vifPlugin.create({ stateDir: "/tmp" });
      const vif = await factory.open({ name: `tb${labId()}`, mtu: 65000, netns: ns.name });
      try {
        await vif.addAddress("198.19.254.1/32");
        await vif.addRoute("198.18.0.0/16");
        // 40 datagrams of 60000 bytes, then 120 of 200: more than one read buffer of each, nobody reading meanwhile
        const sizes = [...Array(40).fill(60000), ...Array(120).fill(200)];
        const send = `const s = Deno.listenDatagram({ transport: "udp", hostname: "198.19.254.1", port: 0 });
        const sizes = ${JSON.stringify(sizes)};
        for (let i = 0; i < sizes.length; i++) {
          await s.send(new Uint8Array(sizes[i]).fill(i & 0xff), { transport: "udp", hostname: "198.18.5.5", port: 9 });
        }
        s.close();`;
        const sent = await ns.run([Deno.execPath(), "eval", send]);
        equal(sent.code, 0, sent.stderr);
        const got: Array<{ index: number; size: number; whole: boolean }> = [];
        let largestBatch = 0;
        const deadline = Date.now() + 10_000;
        while (got.length < sizes.length && Date.now() < deadline) {
          const batch = await vif.readPackets();
          largestBatch = Math.max(largestBatch, batch.length);
          for (const p of batch) {
            // IPv4 UDP to port 9: [ihl*4 .. +8) is the UDP header, the payload follows
            if (p[0] >> 4 !== 4 || p[9] !== 17) continue;
            const l4 = (p[0] & 0x0f) * 4;
            if (((p[l4 + 2] << 8) | p[l4 + 3]) !== 9) continue;
            const payload = p.subarray(l4 + 8);
            const index = got.length;
            got.push({ index, size: payload.length, whole: payload.every((b) => b === (index & 0xff)) });
          }
        }
        deepStrictEqual(got.map((g) => g.size), sizes);
        deepStrictEqual(got.filter((g) => !g.whole).map((g) => g.index), []);
        ok(largestBatch > 15, `small packets are read many to a batch (largest ${largestBatch})`);
      } finally {
        await vif.close();
      }
    } finally {
      await ns.close();
    }
  },
);

for (const wait of ["event loop", "worker poll", "adaptive"] as const) {
  Deno.test(
    `vif: packets that come while a read waits (${wait}) arrive whole and in order; a removed device fails the read`,
    opts,
    async () => {
      const ns = await Netns.create("nw");
      try {
        const name = `tw${labId()}`;
        const vif = await openTun({ name, mtu: 65000, netns: ns.name }, wait);
        try {
          equal((vif as { wait?: string }).wait, wait);
          await vif.addAddress("198.19.254.1/32");
          await vif.addRoute("198.18.0.0/16");
          // rounds of three datagrams 30 ms apart: the first of each finds the reader waiting, the others queued
          const sizes = Array.from({ length: 30 }, (_, i) => [1400, 60000, 20][i % 3]);
          const send = `const s = Deno.listenDatagram({ transport: "udp", hostname: "198.19.254.1", port: 0 });
          const sizes = ${JSON.stringify(sizes)};
          for (let i = 0; i < sizes.length; i++) {
            if (i % 3 === 0) await new Promise((r) => setTimeout(r, 30));
            await s.send(new Uint8Array(sizes[i]).fill(i), { transport: "udp", hostname: "198.18.5.5", port: 9 });
          }
          s.close();`;
          const sender = ns.run([Deno.execPath(), "eval", send]);
          const got: Array<{ size: number; whole: boolean }> = [];
          const deadline = Date.now() + 10_000;
          while (got.length < sizes.length && Date.now() < deadline) {
            for (const p of await vif.readPackets()) {
              if (p[0] >> 4 !== 4 || p[9] !== 17) continue; // IPv4 UDP only (not the kernel's IPv6 chatter)
              const payload = p.subarray((p[0] & 0x0f) * 4 + 8);
              got.push({ size: payload.length, whole: payload.every((b) => b === got.length) });
            }
          }
          equal((await sender).code, 0);
          deepStrictEqual(got.map((g) => g.size), sizes);
          deepStrictEqual(got.filter((g) => !g.whole), []);
          // the read's outcome is taken at once: a worker's poll may see the device go before the deletion returns
          const waiting = vif.readPackets().then(() => undefined, (e: unknown) => e);
          await ns.exec(["ip", "link", "del", name]);
          let timer: ReturnType<typeof setTimeout> | undefined;
          const e = await Promise.race([
            waiting,
            new Promise((resolve) => timer = setTimeout(() => resolve("the read still waits after 5 s"), 5000)),
          ]);
          clearTimeout(timer);
          ok(e instanceof TelError, `the waiting read failed: ${e}`);
          match(e.message, new RegExp(`read from ${name} failed`));
          match(e.hint ?? "", /removed/);
        } finally {
          await vif.close();
        }
      } finally {
        await ns.close();
      }
    },
  );
}

Deno.test("vif: TEL_TUN_WAIT picks how reads wait; an unknown value is a config error naming it", () => {
  const before = Deno.env.get("TEL_TUN_WAIT");
  try {
    Deno.env.delete("TEL_TUN_WAIT");
    equal(waitFromEnv(), "worker poll");
    Deno.env.set("TEL_TUN_WAIT", "event-loop");
    equal(waitFromEnv(), "event loop");
    Deno.env.set("TEL_TUN_WAIT", "worker-poll");
    equal(waitFromEnv(), "worker poll");
    Deno.env.set("TEL_TUN_WAIT", "adaptive");
    equal(waitFromEnv(), "adaptive");
    Deno.env.set("TEL_TUN_WAIT", "epoll");
    throws(() => waitFromEnv(), (e: unknown) => {
      ok(e instanceof TelError && e.category === "config", String(e));
      match(e.message, /TEL_TUN_WAIT="epoll"/);
      match(e.hint ?? "", /"worker-poll", "event-loop" or "adaptive"/);
      return true;
    });
  } finally {
    if (before === undefined) Deno.env.delete("TEL_TUN_WAIT");
    else Deno.env.set("TEL_TUN_WAIT", before);
  }
});

Deno.test(
  "vif (adaptive): a busy TUN leaves the event loop and waits in the worker's poll until packets come one at a time again",
  opts,
  async () => {
    const ns = await Netns.create("na");
    /** The fds this process has open on /dev/net/tun (the driver's, and the event loop's copy while it has one). */
    const tunFds = () => fdsOpenOn("/dev/net/tun");
    const before = tunFds();
    try {
      const name = `ta${labId()}`;
      const vif = await openTun({ name, mtu: 65000, netns: ns.name }, "adaptive");
      try {
        equal((vif as { wait?: string }).wait, "adaptive");
        // no IPv6 chatter from the kernel: only the test's datagrams come
        await ns.exec(["sysctl", "-qw", `net.ipv6.conf.${name}.disable_ipv6=1`]);
        await vif.addAddress("198.19.254.1/32");
        await vif.addRoute("198.18.0.0/16");
        await new Promise((resolve) => setTimeout(resolve, 50));
        vif.tryReadPackets!(); // what came before
        equal(tunFds(), before + 2, "opened idle: the event loop has a copy of the fd");
        const sender = (count: number, gapMs: number) =>
          ns.run([
            Deno.execPath(),
            "eval",
            `const s = Deno.listenDatagram({ transport: "udp", hostname: "198.19.254.1", port: 0 });
            for (let i = 0; i < ${count}; i++) {
              if (${gapMs} > 0) await new Promise((r) => setTimeout(r, ${gapMs}));
              await s.send(new Uint8Array(100), { transport: "udp", hostname: "198.18.5.5", port: 9 });
            }
            s.close();`,
          ]);
        const udp = (batch: Uint8Array[]) => batch.filter((p) => p[0] >> 4 === 4 && p[9] === 17).length;
        // a burst, read without waiting: busy
        equal((await sender(40, 0)).code, 0);
        let got = udp(await vif.readPackets());
        for (let tries = 0; got < 40 && tries < 100; tries++) got += udp(vif.tryReadPackets!());
        equal(got, 40);
        equal(tunFds(), before + 1, "busy: the event loop's copy is closed");
        // then one datagram every 40 ms: each wait is sampled while it waits (event loop: 2 fds; worker's poll: 1)
        const trickle = sender(24, 40);
        const waits: string[] = [];
        got = 0;
        const deadline = Date.now() + 10_000;
        while (got < 24 && Date.now() < deadline) {
          let settled = false;
          const read = vif.readPackets().finally(() => settled = true);
          await new Promise((resolve) => setTimeout(resolve, 10));
          if (!settled) waits.push(tunFds() === before + 2 ? "loop" : "poll");
          got += udp(await read);
        }
        equal((await trickle).code, 0);
        equal(got, 24);
        equal(waits[0], "poll", `the first wait after the burst is the worker's poll (${waits})`);
        const back = waits.indexOf("loop");
        ok(back > 0, `a trickle brings the event loop's wait back (${waits})`);
        ok(waits.slice(back).every((w) => w === "loop"), `and it stays (${waits})`);
      } finally {
        await vif.close();
      }
      equal(tunFds(), before, "closed: no copy left");
    } finally {
      await ns.close();
    }
  },
);
