import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { errorCodes, isVdError, VdError } from './errors.js';
import { renderErrorTable } from './errors-doc.js';

describe('error registry', () => {
  it('docs/errors.md is generated from the registry (run `pnpm --filter @vd/core gen:errors`)', () => {
    const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');
    expect(doc).toBe(renderErrorTable());
  });

  it('every code is ERR_VD_* and listed in order', () => {
    const codes = Object.keys(errorCodes);
    expect(codes.every((c) => /^ERR_VD_[A-Z_]+$/.test(c))).toBe(true);
    expect(codes).toEqual([...codes].sort());
  });

  it('instanceof works across copies through the Symbol.for brand', () => {
    const foreign = Object.assign(Object.create(Error.prototype), { [Symbol.for('vd.error')]: true, code: 'ERR_VD_IO' });
    expect(foreign instanceof VdError).toBe(true);
    expect(isVdError(new Error('x'))).toBe(false);
    expect(new VdError('ERR_VD_ABORTED', 'x').name).toBe('AbortError');
  });
});
