/** Subnet logic: addresses and CIDRs, the routed set, pod-IP covering blocks, route conflicts and diffs. */

export {
  bareIpv6HostPort,
  Cidr,
  type Family,
  familyBits,
  formatHostPort,
  hostPortOr,
  IpAddr,
  notADnsServer,
  parseHostPort,
  type SpecialAddress,
  specialAddress,
} from "./ip.ts";
export {
  type Conflict,
  type ConflictOptions,
  conflictsError,
  coveringCidrs,
  describeConflict,
  diffSubnets,
  findConflicts,
  normalize,
  type RoutedSubnets,
  routedSubnets,
  type RouteInputs,
  sortCidrs,
  subtract,
} from "./sets.ts";
