/**
 * `@vd/conformance`: the cases every vd transport and block source must pass, tied to no test
 * runner. Bind them with `@vd/conformance/vitest`, or loop over `cases` in any runner.
 */
import { caseSpecs } from './cases/index.js';
import { bindCases, type ConformanceOptions, type ConformanceSuite } from './define.js';

export { readSpans } from './cases/io.js';
export type { CaseEnv, CaseSpec, ConformanceCase, ConformanceOptions, ConformanceSuite, FactoryOptions, RunContext } from './define.js';
export { Model } from './model.js';
export { type Requirement, requirementRules, unmetRequirements } from './requirements.js';
export { createRng, type Rng } from './rng.js';
export { caseSpecs };

/** The suite bound to `factory`: one runner-agnostic case per entry of the case table. */
export function defineConformance(options: ConformanceOptions): ConformanceSuite {
  if (!options || typeof options.factory !== 'function') throw new TypeError('defineConformance needs { name, factory }');
  if (typeof options.name !== 'string' || options.name.length === 0) throw new TypeError('defineConformance needs a name');
  return bindCases(caseSpecs, options);
}
