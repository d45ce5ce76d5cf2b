/**
 * Zero-copy sends running at once, server-wide. Each holds a libuv pool thread for as long as its
 * client takes to read (up to the stall limit), so the cap stays below the pool size and stalled
 * clients cannot starve file I/O; a reply that finds no slot is copied instead.
 */
export class SendSlots {
  #active = 0;
  constructor(readonly max: number) {}

  get available(): boolean {
    return this.#active < this.max;
  }

  tryAcquire(): boolean {
    if (this.#active >= this.max) return false;
    this.#active++;
    return true;
  }

  release(): void {
    this.#active--;
  }
}
