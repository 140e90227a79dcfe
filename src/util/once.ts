/** A release function callers may call more than once (on every exit path): only the first call runs `run`. */
export function once(run: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    run();
  };
}
