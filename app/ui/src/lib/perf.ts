// Performance marks the benchmark (e2e/bench.mjs) reads: `flyt:open` (a channel opened to its
// newest screen painted) and `flyt:incoming` / `flyt:incoming:paint` (an event's message on
// screen). They cost a few microseconds and are always on.

/** Runs `f` once the next frame has been painted. */
export function afterPaint(f: () => void) {
  requestAnimationFrame(() => setTimeout(f, 0));
}
