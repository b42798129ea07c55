/** Applies the cluster's subnet set to the VIF as diffs: also-proxy added, never-proxy and conflicts kept out. */

import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";
import type { Vif } from "../plugin.ts";
import { Cidr, conflictsError, describeConflict, diffSubnets, findConflicts, routedSubnets } from "../subnet/mod.ts";

/** What the router needs from the packet stack. */
export interface RouteSink {
  setRoutes(cidrs: string[]): void;
}

/** Options of {@link Router}. */
export interface RouterOptions {
  vif: Vif;
  stack: RouteSink;
  alsoProxy?: Cidr[];
  neverProxy?: Cidr[];
  allowConflicting?: Cidr[];
}

/** The outcome of one apply. */
export interface RouteChange {
  added: string[];
  removed: string[];
  /** Conflicting subnets left out (only after the first apply; the first one fails instead). */
  skipped: string[];
}

/** Keeps the VIF's routes equal to what the cluster says should be routed. */
export class Router {
  #opts: RouterOptions;
  #current: Cidr[] = [];
  #never: Cidr[] = [];

  constructor(opts: RouterOptions) {
    this.#opts = opts;
  }

  /** The routes on the VIF now. */
  get routes(): string[] {
    return this.#current.map(String);
  }

  /** The never-proxy blocks in force. */
  get neverProxy(): string[] {
    return this.#never.map(String);
  }

  /** Adds never-proxy blocks (e.g. the API server's and the manager's own address) before the next apply. */
  addNeverProxy(blocks: Cidr[]): void {
    this.#opts = { ...this.#opts, neverProxy: [...(this.#opts.neverProxy ?? []), ...blocks] };
  }

  /**
   * Routes `subnets` (pod + service subnets). On the first apply (`strict`) a conflict with a host route throws,
   * naming both; later changes leave conflicting subnets out and log them.
   */
  async apply(subnets: string[], strict: boolean): Promise<RouteChange> {
    const cluster: Cidr[] = [];
    for (const s of subnets) {
      try {
        cluster.push(Cidr.parse(s));
      } catch (e) {
        log.warn("router", "manager sent a subnet that does not parse; ignored", { subnet: s, error: errorMessage(e) });
      }
    }
    const { routes, neverProxy } = routedSubnets({
      cluster,
      alsoProxy: this.#opts.alsoProxy,
      neverProxy: this.#opts.neverProxy,
    });
    this.#never = neverProxy;
    const hostRoutes = await this.#opts.vif.hostRoutes();
    const conflicts = findConflicts(routes, hostRoutes, {
      allow: this.#opts.allowConflicting,
      vifName: this.#opts.vif.name,
    });
    const skipped: string[] = [];
    let wanted = routes;
    if (conflicts.length > 0) {
      if (strict) throw conflictsError(conflicts);
      for (const c of conflicts) log.error("router", describeConflict(c));
      const bad = new Set(conflicts.map((c) => c.subnet.toString()));
      wanted = routes.filter((r) => !bad.has(r.toString()));
      skipped.push(...bad);
    }
    const { add, remove } = diffSubnets(this.#current, wanted);
    // a route of ours removed by someone else (by hand, or with the device set down) is put back now, and one to
    // remove that is gone already is no failure: either would otherwise stop every later change
    const ours = new Set(
      hostRoutes.filter((h) => h.device === this.#opts.vif.name).map((h) => h.destination),
    );
    const lost = this.#current.filter((r) => !ours.has(r.toString()));
    const kept = new Set(wanted.map(String));
    const restore = lost.filter((r) => kept.has(r.toString()));
    if (restore.length) {
      log.warn("router", "routes of tel's were removed; adding them again", { routes: restore.map(String) });
    }
    // the new routes go first: removing first left a moment in which a narrower subnet replaced by a wider one was
    // routed nowhere (on a real machine, to the default gateway)
    for (const r of [...add, ...restore]) await this.#opts.vif.addRoute(r.toString());
    for (const r of remove) {
      try {
        await this.#opts.vif.removeRoute(r.toString());
      } catch (e) {
        if (ours.has(r.toString())) throw e;
        log.debug("router", "route already gone", { route: r.toString(), error: errorMessage(e) });
      }
    }
    this.#current = wanted;
    this.#opts.stack.setRoutes(wanted.map(String));
    if (add.length || remove.length) {
      log.info("router", "routes changed", { added: add.map(String), removed: remove.map(String) });
    }
    return { added: [...add, ...restore].map(String), removed: remove.map(String), skipped };
  }

  /** Removes every route it added. */
  async clear(): Promise<void> {
    for (const r of this.#current) {
      try {
        await this.#opts.vif.removeRoute(r.toString());
      } catch (e) {
        log.debug("router", "route already gone", { route: r.toString(), error: errorMessage(e) });
      }
    }
    this.#current = [];
    this.#opts.stack.setRoutes([]);
  }
}
