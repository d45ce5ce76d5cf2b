import type { Capabilities, Disk } from '@vd/core';
import { fail } from './assert.js';
import { type Requirement, unmetRequirements } from './requirements.js';
import { createRng, type Rng } from './rng.js';

export interface FactoryOptions {
  /** Open the disk read-only. A factory that cannot returns a writable disk, and read-only cases skip. */
  readOnly?: boolean;
}

export interface ConformanceOptions {
  /** Names the suite (the transport or source under test), e.g. `file (sparse raw)`. */
  name: string;
  /**
   * A fresh disk of at least 1 MiB for each call, writable unless `readOnly` is asked for. Each
   * case closes (or destroys) every disk it was given.
   */
  factory: (opts: FactoryOptions) => Promise<Disk>;
  /** Runs once after every case, e.g. to remove a temporary directory the factory filled. */
  teardown?: () => Promise<void> | void;
  /** Seed of the data each case writes; default `vd`. A failure message names the seed it used. */
  seed?: string;
}

/** What a runner hands a case. */
export interface RunContext {
  /**
   * Marks the case skipped with a reason (vitest: `ctx.skip(note)`, which throws). A runner
   * whose skip returns instead is fine too: the case returns at once.
   */
  skip(reason: string): void;
}

/** One runner-agnostic case, bound to a factory. */
export interface ConformanceCase {
  /** Stable identifier, `area/what`, e.g. `zero/reads-zero`. */
  readonly id: string;
  readonly title: string;
  /** Capabilities the disk must declare; unmet ones skip the case, naming the capability. */
  readonly requires: readonly Requirement[];
  run(ctx: RunContext): Promise<void>;
}

export interface ConformanceSuite {
  readonly name: string;
  readonly cases: readonly ConformanceCase[];
  teardown(): Promise<void>;
}

/** What a case body works with. */
export interface CaseEnv {
  /** The disk the case runs against: read-only when the case requires `read-only`. */
  readonly disk: Disk;
  readonly caps: Readonly<Capabilities>;
  readonly rng: Rng;
  /** capabilities.blockSize.minimum */
  readonly min: number;
  /** capabilities.blockSize.maximum */
  readonly max: number;
  /** Another disk from the factory; closed or destroyed after the case like the first. */
  open(opts?: FactoryOptions): Promise<Disk>;
  /** Rounds down to blockSize.minimum. */
  align(n: number): number;
  /** A random range inside [start, end), aligned to blockSize.minimum, at most `maxLength` bytes (at least one block). */
  range(start: number, end: number, maxLength: number): { offset: number; length: number };
  /** The working window at the start of the disk: min(size, 4 MiB), aligned. */
  readonly window: number;
}

/** A case before it is bound to a factory: the table the README lists. */
export interface CaseSpec {
  readonly id: string;
  readonly title: string;
  readonly requires: readonly Requirement[];
  body(env: CaseEnv): Promise<void>;
}

const MiB = 1024 * 1024;
const WINDOW = 4 * MiB;

function looksLikeDisk(value: unknown): value is Disk {
  const d = value as Disk;
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof d.read === 'function' &&
    typeof d.close === 'function' &&
    typeof d.capabilities === 'object'
  );
}

async function openChecked(options: ConformanceOptions, opts: FactoryOptions): Promise<Disk> {
  const disk = await options.factory(opts);
  if (!looksLikeDisk(disk)) fail(`factory(${JSON.stringify(opts)}) of ${options.name} did not return a Disk`);
  if (!Number.isSafeInteger(disk.size) || disk.size < MiB) {
    await disk.destroy();
    fail(`factory(${JSON.stringify(opts)}) of ${options.name} returned a disk of ${disk.size} bytes; the suite needs at least 1 MiB`);
  }
  return disk;
}

/** Binds each case to the factory: it opens its disk, skips on unmet requirements, runs and cleans up. */
export function bindCases(specs: readonly CaseSpec[], options: ConformanceOptions): ConformanceSuite {
  const seed = options.seed ?? 'vd';
  const cases = specs.map(
    (spec): ConformanceCase => ({
      id: spec.id,
      title: spec.title,
      requires: spec.requires,
      async run(ctx) {
        const disks: Disk[] = [];
        const open = async (opts: FactoryOptions = {}) => {
          const d = await openChecked(options, opts);
          disks.push(d);
          return d;
        };
        let failed = true;
        try {
          const disk = await open(spec.requires.includes('read-only') ? { readOnly: true } : {});
          const unmet = unmetRequirements(spec.requires, disk);
          if (unmet.length > 0) {
            failed = false;
            ctx.skip(unmet.join('; '));
            return;
          }
          const { minimum: min, maximum: max } = disk.capabilities.blockSize;
          const align = (n: number) => n - (n % min);
          const rng = createRng(`${seed}:${spec.id}`);
          const env: CaseEnv = {
            disk,
            caps: disk.capabilities,
            rng,
            min,
            max,
            open,
            align,
            window: align(Math.min(disk.size, WINDOW)),
            range(start, end, maxLength) {
              const first = Math.ceil(start / min);
              const stop = Math.floor(end / min);
              const blocks = rng.int(1, Math.max(1, Math.min(Math.floor(maxLength / min), stop - first)));
              return { offset: rng.int(first, Math.max(first, stop - blocks)) * min, length: blocks * min };
            },
          };
          try {
            await spec.body(env);
          } catch (err) {
            if (err instanceof Error && !err.message.includes('seed ')) err.message += ` (case ${spec.id}, seed ${rng.seed})`;
            throw err;
          }
          failed = false;
        } finally {
          // After a failure, destroy so a wedged disk cannot hang the run; otherwise a clean close
          // is part of the contract and its error is the case's.
          for (const d of disks) {
            if (failed) await d.destroy().catch(() => {});
            else if (!d.closed) await d.close();
          }
        }
      },
    }),
  );
  return {
    name: options.name,
    cases,
    async teardown() {
      await options.teardown?.();
    },
  };
}
