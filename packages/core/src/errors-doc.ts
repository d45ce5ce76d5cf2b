import { errorCodes } from './errors.js';

/** The error table of `docs/errors.md`, rendered from the registry so the two cannot drift. */
export function renderErrorTable(): string {
  const rows = Object.entries(errorCodes)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([code, { meaning, action }]) => `| \`${code}\` | ${meaning} | ${action} |`);
  return [
    '# vd error codes',
    '',
    'Every error vd raises is a `VdError` with one of these permanent codes (generated from',
    '`packages/core/src/errors.ts` by `pnpm --filter @vd/core gen:errors`; do not edit by hand).',
    '',
    '| code | meaning | what to do |',
    '|---|---|---|',
    ...rows,
    '',
  ].join('\n');
}
