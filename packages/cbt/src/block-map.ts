import { ENTRIES_PER_PAGE } from './sidecar-format.js';

/**
 * "Last changed at point n" for every block, 0 meaning "not since the epoch began". Kept in
 * pages of ENTRIES_PER_PAGE counters (the sidecar's pages), allocated on first change, each with
 * its largest counter, so a query skips untouched pages without looking inside: 1 TiB at 64 KiB
 * is 16 Mi blocks in 16 401 pages; memory grows with what was written, at most 4 bytes a block.
 */
export class BlockMap {
  readonly blocks: number;
  readonly pageCount: number;
  /** Pages holding a change (allocated); each is on the sidecar, or dirty on its way there. */
  allocated = 0;
  readonly #pages: (Uint32Array | undefined)[];
  readonly #max: Uint32Array;

  constructor(blocks: number) {
    this.blocks = blocks;
    this.pageCount = Math.ceil(blocks / ENTRIES_PER_PAGE);
    this.#pages = new Array(this.pageCount);
    this.#max = new Uint32Array(this.pageCount);
  }

  get(block: number): number {
    const page = this.#pages[Math.floor(block / ENTRIES_PER_PAGE)];
    return page ? page[block % ENTRIES_PER_PAGE]! : 0;
  }

  /** Sets block's counter; returns its page index. */
  set(block: number, point: number): number {
    const p = Math.floor(block / ENTRIES_PER_PAGE);
    let page = this.#pages[p];
    if (!page) {
      page = new Uint32Array(ENTRIES_PER_PAGE);
      this.#pages[p] = page;
      this.allocated++;
    }
    page[block % ENTRIES_PER_PAGE] = point;
    if (point > this.#max[p]!) this.#max[p] = point;
    return p;
  }

  page(index: number): Uint32Array | undefined {
    return this.#pages[index];
  }

  /** Installs a page read from the sidecar. */
  load(index: number, entries: Uint32Array): void {
    if (!this.#pages[index]) this.allocated++;
    this.#pages[index] = entries;
    let max = 0;
    for (let i = 0; i < entries.length; i++) if (entries[i]! > max) max = entries[i]!;
    this.#max[index] = max;
  }

  /** The largest counter anywhere (0 when nothing was changed). */
  maxPoint(): number {
    let max = 0;
    for (let i = 0; i < this.pageCount; i++) if (this.#max[i]! > max) max = this.#max[i]!;
    return max;
  }

  /**
   * Runs `[start, end)` of blocks in `[from, to)` whose counter n is past `after`, merged, in order.
   * At most `limit` runs; a run cut short by `to` is the only one that may continue.
   *
   * There is no upper bound: a counter holds a block's newest change only, so a block whose counter
   * is past a later point may also have changed before it, and leaving it out would under-report.
   */
  runs(from: number, to: number, after: number, limit: number): [number, number][] {
    const out: [number, number][] = [];
    const per = ENTRIES_PER_PAGE;
    let runStart = -1;
    let b = from;
    while (b < to) {
      const p = Math.floor(b / per);
      const page = this.#pages[p];
      const pageEnd = Math.min((p + 1) * per, to);
      if (!page || this.#max[p]! <= after) {
        if (runStart >= 0) {
          out.push([runStart, b]);
          runStart = -1;
          if (out.length >= limit) return out;
        }
        b = pageEnd;
        continue;
      }
      const base = p * per;
      for (; b < pageEnd; b++) {
        const n = page[b - base]!;
        if (n > after) {
          if (runStart < 0) runStart = b;
        } else if (runStart >= 0) {
          out.push([runStart, b]);
          runStart = -1;
          if (out.length >= limit) return out;
        }
      }
    }
    if (runStart >= 0) out.push([runStart, to]);
    return out;
  }
}
