import type { CommandEntry } from '../context.js';

/**
 * Every `vd` command, in the order `vd --help` lists them: what that list shows (name, summary,
 * arguments) and how to load the rest. `vd` imports only the module of the command it runs, so
 * `vd --help` and `vd info disk.img` do not pay for NBD, TLS, the host or backups. A new command
 * is one file in this directory exporting `define(cmd, ctx)` (options, help, action), plus one
 * entry here.
 */
export const commands: readonly CommandEntry[] = [
  {
    name: 'info',
    description: 'show size, format, transport, capabilities and allocation of a disk',
    arguments: [['<disk>', 'path or URI of the disk']],
    load: () => import('./info.js'),
  },
  {
    name: 'create',
    description: 'create a new, empty (all-zero, sparse) disk',
    arguments: [['<path>', 'path of the new disk (must not exist)']],
    load: () => import('./create.js'),
  },
  {
    name: 'create-child',
    description: 'create a VMDK redo log (child) of a VMDK: reads fall through to the parent, writes stay in the child',
    arguments: [
      ['<parent>', 'path of the parent VMDK (any subformat)'],
      ['<child>', 'path of the new child (must not exist)'],
    ],
    load: () => import('./create-child.js'),
  },
  {
    name: 'convert',
    description: 'copy a disk into a new disk file, keeping it sparse',
    arguments: [
      ['<src>', 'path or URI of the source disk'],
      ['<dst>', 'path of the new disk (must not exist)'],
    ],
    load: () => import('./convert.js'),
  },
  {
    name: 'meta',
    description: "list, read and write a VMDK descriptor's ddb.* metadata (adapter, geometry, uuid, your own keys)",
    subcommands: true,
    load: () => import('./meta.js'),
  },
  {
    name: 'check',
    description: 'check a VMDK link for damage; with --repair, fix what can be fixed without guessing data',
    arguments: [['<disk>', 'path of the VMDK']],
    load: () => import('./check.js'),
  },
  {
    name: 'map',
    description: 'list the extents of a disk: which ranges hold data, read as zero, or are holes',
    arguments: [['<disk>', 'path or URI of the disk']],
    load: () => import('./map.js'),
  },
  {
    name: 'dump',
    description: 'print a range of a disk as a hex dump (like xxd) or as raw bytes',
    arguments: [['<disk>', 'path or URI of the disk']],
    load: () => import('./dump.js'),
  },
  {
    name: 'cmp',
    description: 'compare two disks byte for byte; exit 0 when identical, 1 at the first difference',
    arguments: [
      ['<a>', 'path or URI of the first disk'],
      ['<b>', 'path or URI of the second disk'],
    ],
    load: () => import('./cmp.js'),
  },
  {
    name: 'demo',
    description:
      'a self-contained tour: an embedded host, a disk written like a VM, full and incremental backups over NBDSSL, restore, proof',
    load: () => import('./demo.js'),
  },
  {
    name: 'cert',
    description: 'make and inspect TLS certificates for NBD over TLS (CA, server, client)',
    subcommands: true,
    load: () => import('./cert.js'),
  },
  {
    name: 'serve',
    description: 'export disks over NBD (TCP, a unix socket, or systemd socket activation) until interrupted',
    arguments: [['[disk...]', 'paths or URIs of the disks to export']],
    load: () => import('./serve.js'),
  },
  {
    name: 'snapshot',
    description: "take (optionally leased), renew, list and delete snapshots of a vd host's disk (vd serve --datastore … --api …)",
    subcommands: true,
    load: () => import('./snapshot.js'),
  },
  {
    name: 'changes',
    description: "areas of a vd host's disk changed since a change ID (for an incremental backup)",
    arguments: [
      ['<api-url>', "the host's control API, http(s)://host:port"],
      ['<disk>', 'the disk (its file name in the datastore)'],
    ],
    load: () => import('./changes.js'),
  },
  {
    name: 'backup',
    description: 'take a restore point of a disk into a repository: full the first time, incremental after',
    arguments: [
      ['<disk-uri>', 'the disk: a path, nbd://, nbds:// URI, or a vd host http(s)://api/<disk> (snapshot + change tracking)'],
      ['<repo-dir>', 'the repository directory (created when missing)'],
    ],
    load: () => import('./backup.js'),
  },
  {
    name: 'restore',
    description: 'write a restore point onto a disk: a new file (raw or VMDK of any layout), an existing disk, or an NBD export',
    arguments: [
      ['<repo>', 'the repository, optionally @<point> (default: the latest point)'],
      ['<target-uri>', 'a new file, an existing disk file, or an nbd:// / nbds:// URI'],
    ],
    load: () => import('./restore.js'),
  },
  {
    name: 'verify',
    description: "check a restore point and the chain below it: manifests, VMDK links and every extent's SHA-256",
    arguments: [['<repo>', 'the repository, optionally @<point> (default: the latest point)']],
    load: () => import('./verify.js'),
  },
];
