import type { CaseSpec } from '../define.js';
import { errorCases } from './errors.js';
import { extentCases } from './extents.js';
import { ioCases } from './io.js';
import { lifecycleCases } from './lifecycle.js';
import { writePathCases } from './write-paths.js';

/** Every case, in the order runners list them. */
export const caseSpecs: readonly CaseSpec[] = [...ioCases, ...errorCases, ...writePathCases, ...extentCases, ...lifecycleCases];
