/**
 * A `deno lint` plugin (deno.json `lint.plugins`): no function literal assigned straight to a property in tel's code.
 *
 * V8 allocates a function written as the right side of a property assignment (`this.#gone = () => …`,
 * `obj.onX = function …`, also `??=`, `||=`, `&&=`, through parentheses and `as`) in the old generation, guessing it
 * is a method that lives long. Made per flow, packet or lookup, such a closure is old while all it reaches (the
 * flow, its tunnel and buffers) is young: once the flow is done, the dead closure still counts as a root for every
 * scavenge until a full GC, and what it reaches is promoted into the old generation. The tunnel opener's one such
 * closure kept every flow's objects that way (a reproducer's scavenges promoted 7.4 % of what it allocated, 0.1 %
 * with the closure in a local first). Write `const f = () => …; this.x = f;` or pass it as an argument instead.
 * Test files, fixtures and benchmarks are not checked.
 */

const SKIPPED = /(_test|_fixture)\.ts$|(^|\/)(tests|bench)\//;

type Node = Deno.lint.Node;

/** The expression under parentheses, `as`, `satisfies`, `<T>` and `!` (all gone from the JavaScript V8 runs). */
function unwrapped(node: Node): Node {
  let n = node;
  for (;;) {
    if (
      n.type === "TSAsExpression" || n.type === "TSSatisfiesExpression" || n.type === "TSTypeAssertion" ||
      n.type === "TSNonNullExpression"
    ) {
      n = n.expression;
    } else {
      return n;
    }
  }
}

const plugin: Deno.lint.Plugin = {
  name: "tel",
  rules: {
    "young-closures": {
      create(ctx) {
        if (SKIPPED.test(ctx.filename.replaceAll("\\", "/"))) return {};
        return {
          AssignmentExpression(node) {
            if (
              node.operator !== "=" && node.operator !== "??=" && node.operator !== "||=" && node.operator !== "&&="
            ) {
              return;
            }
            if (node.left.type !== "MemberExpression") return;
            const right = unwrapped(node.right);
            if (right.type !== "ArrowFunctionExpression" && right.type !== "FunctionExpression") return;
            ctx.report({
              node: node.right,
              message: "a function literal assigned to a property is allocated in V8's old generation, and keeps " +
                "all it reaches through scavenges until a full GC",
              hint: "give it a name first (`const f = () => …; obj.x = f;`), or, once per process, say why with " +
                "`// deno-lint-ignore tel/young-closures`",
            });
          },
        };
      },
    },
  },
};

export default plugin;
