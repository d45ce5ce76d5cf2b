/**
 * Binds the conformance cases to vitest: one `describe` per suite, one `it` per case. A case whose
 * requirements the disk does not meet calls vitest's `ctx.skip(note)` with the capability that
 * caused it, so every skip in the report is traceable to a declared capability.
 */
import { afterAll, describe, it } from 'vitest';
import { type ConformanceOptions, defineConformance } from './index.js';

export interface RunConformanceOptions extends ConformanceOptions {
  /** Per-case timeout in milliseconds (default: the runner's). */
  timeout?: number;
}

export function runConformance(options: RunConformanceOptions): void {
  const suite = defineConformance(options);
  describe(`conformance: ${suite.name}`, () => {
    afterAll(() => suite.teardown());
    for (const c of suite.cases) {
      const requires = c.requires.length > 0 ? ` [requires ${c.requires.join(', ')}]` : '';
      it(`${c.id}: ${c.title}${requires}`, (ctx) => c.run({ skip: (reason) => ctx.skip(reason) }), options.timeout);
    }
  });
}
