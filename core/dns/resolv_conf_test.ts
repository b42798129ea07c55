import assert from "node:assert/strict";
import { parseResolvConf } from "./resolv_conf.ts";

Deno.test("resolv.conf: nameservers, search, ndots, comments", () => {
  const rc = parseResolvConf(
    "# generated\nnameserver 10.0.0.53\nnameserver fe80::1%eth0 ; zone\nsearch a.example. b.example\noptions ndots:5 edns0\n",
  );
  assert.deepEqual(rc, { nameservers: ["10.0.0.53", "fe80::1"], search: ["a.example", "b.example"], ndots: 5 });
  assert.deepEqual(parseResolvConf(""), { nameservers: [], search: [], ndots: 1 });
});
