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

/**
 * Hex lines over a stream of pieces of any length: whole 16-byte lines are printed as they
 * arrive, a partial line waits for the next piece (or `end()`), so the layout does not depend on
 * where the pieces were cut.
 */
export class HexDumper {
  #address: number;
  readonly #held = new Uint8Array(16);
  #heldLength = 0;

  constructor(address: number) {
    this.#address = address;
  }

  push(bytes: Uint8Array): string {
    let out = '';
    let from = 0;
    if (this.#heldLength > 0) {
      const n = Math.min(16 - this.#heldLength, bytes.length);
      this.#held.set(bytes.subarray(0, n), this.#heldLength);
      this.#heldLength += n;
      from = n;
      if (this.#heldLength < 16) return '';
      out += this.#emit(this.#held);
      this.#heldLength = 0;
    }
    const whole = from + Math.floor((bytes.length - from) / 16) * 16;
    out += this.#emit(bytes.subarray(from, whole));
    this.#held.set(bytes.subarray(whole));
    this.#heldLength = bytes.length - whole;
    return out;
  }

  end(): string {
    const out = this.#emit(this.#held.subarray(0, this.#heldLength));
    this.#heldLength = 0;
    return out;
  }

  #emit(bytes: Uint8Array): string {
    const out = hexLines(bytes, this.#address);
    this.#address += bytes.length;
    return out;
  }
}
