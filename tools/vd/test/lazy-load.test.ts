import { spawnSync } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nbd } from '@vd/nbd';
import { nbdssl } from '@vd/nbdssl';
import { describe, expect, it } from 'vitest';
import { commands } from '../src/commands/index.js';
import { transports } from '../src/transports.js';
import { vd, withTempDir } from './run.js';

const bin = fileURLToPath(new URL('../src/bin.ts', import.meta.url));
const trace = fileURLToPath(new URL('./fixtures/trace-modules.mjs', import.meta.url));
const tsx = createRequire(import.meta.url).resolve('tsx');
const commandsDir = fileURLToPath(new URL('../src/commands/', import.meta.url));

/** What `vd <argv>`, run as a process, loaded: every module's URL or path. */
async function modulesLoadedBy(dir: string, ...argv: string[]): Promise<string[]> {
  const out = join(dir, `modules-${argv.join('-').replace(/\W+/g, '_')}.txt`);
  await writeFile(out, '');
  const r = spawnSync(process.execPath, ['--conditions=@vd/source', '--import', tsx, '--import', trace, bin, ...argv], {
    encoding: 'utf8',
    env: { ...process.env, VD_TRACE_MODULES: out, VD_DEBUG: '' },
  });
  expect(r.status, r.stderr).toBe(0);
  return (await readFile(out, 'utf8')).split('\n').filter((l) => l.length > 0);
}

/** Where the packages a command line must not pay for unless it uses them live. */
const HEAVY = [
  '/packages/nbd/',
  '/packages/nbdssl/',
  '/packages/host/',
  '/packages/backup/',
  '/packages/cbt/',
  '/node-forge/',
  '/cli-progress/',
];
const heavyIn = (modules: string[]) => HEAVY.filter((h) => modules.some((m) => m.includes(h)));
const commandModulesIn = (modules: string[]) =>
  modules.map((m) => /\/tools\/vd\/src\/commands\/([\w-]+)\.ts$/.exec(m)?.[1]).filter((n): n is string => n !== undefined && n !== 'index');

describe('vd loads only the command it runs', () => {
  it('vd --help imports no command module and none of NBD, TLS, host, backup, progress bars', async () => {
    await withTempDir(async (dir) => {
      const modules = await modulesLoadedBy(dir, '--help');
      // The trace works: it saw the CLI and commander.
      expect(modules.some((m) => m.endsWith('/tools/vd/src/main.ts'))).toBe(true);
      expect(modules.some((m) => m.includes('/commander/'))).toBe(true);
      expect(heavyIn(modules)).toEqual([]);
      expect(commandModulesIn(modules)).toEqual([]);
    });
  });

  it('vd info on a file imports the info command only, and no NBD or TLS transport', async () => {
    await withTempDir(async (dir) => {
      const disk = join(dir, 'd.img');
      await writeFile(disk, new Uint8Array(4096));
      const modules = await modulesLoadedBy(dir, 'info', disk, '--json');
      expect(commandModulesIn(modules)).toEqual(['info']);
      expect(heavyIn(modules)).toEqual([]);
    });
  });

  it('vd backup and vd verify of a file import no NBD or TLS transport, nor the host', async () => {
    await withTempDir(async (dir) => {
      const disk = join(dir, 'd.img');
      await writeFile(disk, new Uint8Array(4096));
      const repo = join(dir, 'repo');
      for (const argv of [
        ['backup', disk, repo, '--json'],
        ['verify', repo, '--json'],
      ]) {
        // The backup code itself, and nothing for NBD, TLS or a host.
        expect(heavyIn(await modulesLoadedBy(dir, ...argv)), argv[0]).toEqual(['/packages/backup/', '/packages/cbt/']);
      }
    });
  });

  it('the trace does see heavy packages where a command needs them (vd serve --help)', async () => {
    await withTempDir(async (dir) => {
      const modules = await modulesLoadedBy(dir, 'serve', '--help');
      expect(commandModulesIn(modules)).toEqual(['serve']);
      expect(heavyIn(modules)).toEqual(expect.arrayContaining(['/packages/nbd/', '/packages/nbdssl/', '/packages/host/']));
    });
  });

  it('the lazily loaded transports declare the names and schemes of the real ones', () => {
    const declared = transports().map((t) => [t.name, [...t.schemes]]);
    const real = [nbdssl(), nbd()].map((t) => [t.name, [...t.schemes]]);
    expect(declared.slice(1)).toEqual(real);
  });
});

describe('vd --help', () => {
  it('lists every command module with its summary, and each command shows its own options', async () => {
    const files = (await readdir(commandsDir)).filter((f) => f.endsWith('.ts') && f !== 'index.ts' && !f.endsWith('.test.ts'));
    const names = files.map((f) => f.slice(0, -3)).sort();
    expect(commands.map((c) => c.name).sort()).toEqual(names);

    const top = await vd('--help');
    expect(top.code).toBe(0);
    for (const c of commands) expect(top.stdout).toMatch(new RegExp(`^  ${c.name}\\b.*\\S`, 'm'));

    for (const name of names) {
      const help = await vd(name, '--help');
      expect(help.code, name).toBe(0);
      expect(help.stdout, name).toMatch(new RegExp(`^Usage: vd ${name} `));
      // The command's module was loaded: it added options beyond --help, or subcommands.
      expect(help.stdout, name).toMatch(/^ {2}--(?!help)[\w-]+|^Commands:/m);
      expect((await vd('help', name)).stdout, name).toBe(help.stdout);
    }
  });
});
