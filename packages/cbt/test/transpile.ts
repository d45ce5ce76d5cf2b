import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const packages = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Transpiles `@vd/core`'s and `@vd/cbt`'s TypeScript sources (and this test directory) into
 * `out`, with `@vd/core` imports pointing at the copy, so a child process can run them with
 * plain `node`, as the vitest runner does in-process. Transpile only: tsc checks the types.
 */
export async function transpileForChild(out: string): Promise<void> {
  const coreIndex = join(out, 'core', 'src', 'index.js');
  const dirs: [string, string][] = [
    [join(packages, 'core', 'src'), join(out, 'core', 'src')],
    [join(packages, 'cbt', 'src'), join(out, 'cbt', 'src')],
    [join(packages, 'cbt', 'test'), join(out, 'cbt', 'test')],
  ];
  for (const [from, to] of dirs) {
    for (const entry of await readdir(from, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile() || !entry.name.endsWith('.ts') || entry.name.endsWith('.test.ts')) continue;
      const src = join(entry.parentPath, entry.name);
      const dest = join(to, relative(from, src)).replace(/\.ts$/, '.js');
      const { outputText } = ts.transpileModule(await readFile(src, 'utf8'), {
        fileName: src,
        compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: true },
      });
      const rel = relative(dirname(dest), coreIndex);
      await mkdir(dirname(dest), { recursive: true });
      await writeFile(dest, outputText.replaceAll(/from '@vd\/core'/g, `from '${rel.startsWith('.') ? rel : `./${rel}`}'`));
    }
  }
}
