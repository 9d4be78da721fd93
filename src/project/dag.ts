export interface DagNode {
  name: string;
  deps: string[];
}

/**
 * Orders nodes so every node comes after its dependencies (stable: ties keep input order).
 * Returns the cycles found instead when there are any.
 */
export function topoSort<T extends DagNode>(nodes: T[]): { order: T[]; cycles: string[][] } {
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const state = new Map<string, 'visiting' | 'done'>();
  const order: T[] = [];
  const cycles: string[][] = [];
  const stack: string[] = [];
  const visit = (n: T) => {
    const s = state.get(n.name);
    if (s === 'done') return;
    if (s === 'visiting') {
      const i = stack.indexOf(n.name);
      cycles.push([...stack.slice(i), n.name]);
      return;
    }
    state.set(n.name, 'visiting');
    stack.push(n.name);
    for (const d of n.deps) {
      const dep = byName.get(d);
      if (dep) visit(dep);
    }
    stack.pop();
    state.set(n.name, 'done');
    order.push(n);
  };
  for (const n of nodes) visit(n);
  return { order, cycles };
}

/** Every node reachable from `start` following `next` (excluding start). */
export function reachable(start: string, next: (n: string) => string[]): Set<string> {
  const seen = new Set<string>();
  const todo = [...next(start)];
  while (todo.length) {
    const n = todo.pop()!;
    if (seen.has(n)) continue;
    seen.add(n);
    todo.push(...next(n));
  }
  return seen;
}
