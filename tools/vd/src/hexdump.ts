/**
 * `xxd`-style lines: the address (at least 8 hex digits), 16 bytes as 8 groups of 4 hex digits,
 * then the bytes as text with `.` for anything not printable ASCII. `address` is the disk offset
 * of `bytes[0]`; lines run from there in steps of 16, as `xxd -s` prints them.
 */
export function hexLines(bytes: Uint8Array, address: number): string {
  let out = '';
  for (let at = 0; at < bytes.length; at += 16) {
    const line = bytes.subarray(at, Math.min(at + 16, bytes.length));
    let hex = '';
    let text = '';
    for (let i = 0; i < line.length; i++) {
      const b = line[i]!;
      hex += b.toString(16).padStart(2, '0');
      if (i % 2 === 1 && i !== 15) hex += ' ';
      text += b >= 0x20 && b <= 0x7e ? String.fromCharCode(b) : '.';
    }
    out += `${(address + at).toString(16).padStart(8, '0')}: ${hex.padEnd(39)}  ${text}\n`;
  }
  return out;
}
