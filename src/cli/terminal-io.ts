/**
 * The local terminal wired to a guest command: stdin forwarded (raw when the command has a terminal and
 * stdin is one), window resizes reported. Shared by the full CLI (guest-exec.ts) and the `vm exec` fast
 * path (fast-exec.ts), so it imports nothing. Returns the undo, for when the command ends.
 */
export function attachTerminal(o: {
  passStdin: boolean;
  rawMode: boolean;
  tty: boolean;
  onData: (d: Buffer) => void;
  onEnd: () => void;
  onResize: () => void;
}): () => void {
  const stdin = process.stdin;
  if (o.passStdin) {
    if (o.rawMode) stdin.setRawMode(true);
    stdin.on('data', o.onData);
    stdin.once('end', o.onEnd);
    stdin.resume();
  }
  if (o.tty) process.stdout.on('resize', o.onResize);
  return () => {
    if (o.passStdin) {
      stdin.off('data', o.onData);
      stdin.off('end', o.onEnd);
      if (o.rawMode) stdin.setRawMode(false);
      stdin.pause();
      stdin.unref?.();
    }
    if (o.tty) process.stdout.off('resize', o.onResize);
  };
}
