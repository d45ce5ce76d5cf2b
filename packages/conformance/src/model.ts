import type { Disk } from '@vd/core';
import { fail } from './assert.js';

/**
 * What a window of the disk should hold. It starts as a snapshot of the disk (a factory may hand
 * out a disk with contents) and follows every write, zero and trim the case makes; bytes whose
 * value the spec leaves open (a trim without `trimReadsZero`, an aborted write) are marked
 * unknown until the case writes them again.
 */
export class Model {
  readonly offset: number;
  readonly bytes: Uint8Array;
  /** 1 where the expected value is not specified. */
  readonly #unknown: Uint8Array;

  private constructor(offset: number, bytes: Uint8Array) {
    this.offset = offset;
    this.bytes = bytes;
    this.#unknown = new Uint8Array(bytes.length);
  }

  static async load(disk: Disk, offset: number, length: number): Promise<Model> {
    return new Model(offset, await disk.read(offset, length));
  }

  get end(): number {
    return this.offset + this.bytes.length;
  }

  write(offset: number, data: Uint8Array): void {
    const at = this.#index(offset, data.length);
    this.bytes.set(data, at);
    this.#unknown.fill(0, at, at + data.length);
  }

  zero(offset: number, length: number): void {
    const at = this.#index(offset, length);
    this.bytes.fill(0, at, at + length);
    this.#unknown.fill(0, at, at + length);
  }

  forget(offset: number, length: number): void {
    const at = this.#index(offset, length);
    this.#unknown.fill(1, at, at + length);
  }

  /** Expected bytes of a range (unknown bytes hold their last known value). */
  slice(offset: number, length: number): Uint8Array {
    const at = this.#index(offset, length);
    return this.bytes.slice(at, at + length);
  }

  /** Checks `actual` (read from `offset`) against the model, ignoring unknown bytes. */
  compare(offset: number, actual: Uint8Array, what: string): void {
    const at = this.#index(offset, actual.length);
    const { bytes } = this;
    const unknown = this.#unknown;
    for (let i = 0; i < actual.length; i++) {
      if (actual[i] !== bytes[at + i] && unknown[at + i] === 0) {
        fail(`${what}: byte at disk offset ${offset + i} is ${actual[i]}, expected ${bytes[at + i]}`);
      }
    }
  }

  /** Reads a range (default: the whole window) from the disk and compares it. */
  async verify(disk: Disk, what: string, offset = this.offset, length = this.end - offset): Promise<void> {
    this.compare(offset, await disk.read(offset, length), what);
  }

  #index(offset: number, length: number): number {
    if (offset < this.offset || offset + length > this.end) {
      fail(`model: ${offset}+${length} lies outside the window ${this.offset}+${this.bytes.length} (a bug in the case)`);
    }
    return offset - this.offset;
  }
}
