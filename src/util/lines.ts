/**
 * Splits a text stream into lines: feed it chunks, it calls `onLine` for each complete line
 * (without the newline) and keeps the rest for the next chunk. The daemon's ready pipe and
 * control socket both speak one JSON object per line.
 */
export function lineSplitter(onLine: (line: string) => void): (chunk: string) => void {
  let buf = '';
  return (chunk) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      onLine(line);
    }
  };
}
