/**
 * The control API, described in OpenAPI 3.1. Served at `/openapi.json`; `packages/host/openapi.json`
 * is this object written out (a test keeps the two equal). Change the API here first.
 */
import { MAX_TTL } from './state.js';

const error = { $ref: '#/components/responses/Error' };
const ttlParam = (description: string) =>
  ({ name: 'ttl', in: 'query', required: false, description, schema: { type: 'integer', minimum: 1, maximum: MAX_TTL } }) as const;
const diskParam = {
  name: 'disk',
  in: 'path',
  required: true,
  description: 'A disk: a file name directly inside the datastore (no `/`, no leading dot, no `@`).',
  schema: { type: 'string' },
};

export const openApiDocument = {
  openapi: '3.1.0',
  info: {
    title: 'vd disk host control API',
    version: '1.0.0',
    description:
      'Lists the disks a vd host serves over NBD, takes and deletes snapshots, and answers changed-area queries. ' +
      'Every /v1 request needs `Authorization: Bearer <token>`. Errors carry a permanent `ERR_VD_*` code.',
  },
  security: [{ bearer: [] }],
  paths: {
    '/openapi.json': {
      get: {
        operationId: 'openApi',
        summary: 'This document',
        security: [],
        responses: { '200': { description: 'The OpenAPI document', content: { 'application/json': { schema: { type: 'object' } } } } },
      },
    },
    '/v1/disks': {
      get: {
        operationId: 'listDisks',
        summary: 'The disks of the datastore',
        responses: {
          '200': {
            description: 'Every disk served',
            content: {
              'application/json': {
                schema: {
                  type: 'object',
                  required: ['disks'],
                  properties: { disks: { type: 'array', items: { $ref: '#/components/schemas/Disk' } } },
                },
              },
            },
          },
          '401': error,
        },
      },
    },
    '/v1/disks/{disk}': {
      parameters: [diskParam],
      get: {
        operationId: 'getDisk',
        summary: 'One disk',
        responses: {
          '200': { description: 'The disk', content: { 'application/json': { schema: { $ref: '#/components/schemas/Disk' } } } },
          '400': error,
          '401': error,
          '404': error,
        },
      },
    },
    '/v1/disks/{disk}/snapshots': {
      parameters: [diskParam],
      get: {
        operationId: 'listSnapshots',
        summary: "The disk's snapshots",
        responses: {
          '200': {
            description: 'Snapshots, oldest first',
            content: {
              'application/json': {
                schema: {
                  type: 'object',
                  required: ['snapshots'],
                  properties: { snapshots: { type: 'array', items: { $ref: '#/components/schemas/Snapshot' } } },
                },
              },
            },
          },
          '400': error,
          '401': error,
          '404': error,
        },
      },
      post: {
        operationId: 'createSnapshot',
        summary: 'Take a snapshot',
        description:
          'Pauses the disk between two requests, marks a change ID, sends later writes to a redo log and exports the frozen ' +
          'state read-only as `<disk>@<id>`. One snapshot per disk at a time (409 ERR_VD_EXISTS). With `ttl` the ' +
          'snapshot is leased: unless renewed (POST …/lease) within `ttl` seconds, the host deletes it.',
        parameters: [ttlParam(`A lease in seconds (1 … ${MAX_TTL}); without it the snapshot lives until deleted`)],
        responses: {
          '201': {
            description: 'The new snapshot',
            content: { 'application/json': { schema: { $ref: '#/components/schemas/Snapshot' } } },
          },
          '400': error,
          '401': error,
          '404': error,
          '409': error,
        },
      },
    },
    '/v1/disks/{disk}/snapshots/{id}': {
      parameters: [diskParam, { name: 'id', in: 'path', required: true, schema: { type: 'string' } }],
      delete: {
        operationId: 'deleteSnapshot',
        summary: 'Delete a snapshot',
        description: 'Withdraws its export and consolidates the redo log into the disk while writes continue; answers when done.',
        responses: { '204': { description: 'Deleted and consolidated' }, '400': error, '401': error, '404': error },
      },
    },
    '/v1/disks/{disk}/snapshots/{id}/lease': {
      parameters: [diskParam, { name: 'id', in: 'path', required: true, schema: { type: 'string' } }],
      post: {
        operationId: 'renewSnapshotLease',
        summary: "Renew a snapshot's lease",
        description:
          'Sets the lease to run out `ttl` seconds from now (default: the ttl the snapshot was taken with). 404 once the ' +
          'snapshot is gone or being deleted (its lease ran out): stop reading it.',
        parameters: [ttlParam(`Seconds from now (1 … ${MAX_TTL}); required for a snapshot taken without a lease`)],
        responses: {
          '200': { description: 'The snapshot', content: { 'application/json': { schema: { $ref: '#/components/schemas/Snapshot' } } } },
          '400': error,
          '401': error,
          '404': error,
        },
      },
    },
    '/v1/disks/{disk}/changes': {
      parameters: [diskParam],
      get: {
        operationId: 'queryChanges',
        summary: 'Changed areas since a change ID (one page)',
        description:
          'Areas written since `since`, rounded out to the tracking granularity, from `startOffset`. Page on with ' +
          '`startOffset = startOffset + length` until the disk size. 409 ERR_VD_CBT_RESET: tracking cannot answer for ' +
          'that change ID; take a full backup.',
        parameters: [
          {
            name: 'since',
            in: 'query',
            required: true,
            description: 'A change ID, or `*` for every allocated area',
            schema: { type: 'string' },
          },
          {
            name: 'upTo',
            in: 'query',
            required: false,
            description:
              "Changes up to this change ID (a snapshot's): exact when `since` is an earlier snapshot's change ID on this host, " +
              'otherwise answered up to now (more areas, never fewer)',
            schema: { type: 'string' },
          },
          { name: 'startOffset', in: 'query', required: false, schema: { type: 'integer', minimum: 0 } },
          {
            name: 'maxAreas',
            in: 'query',
            required: false,
            description: 'At most this many areas in the page (default and upper bound 16384; page on from its end)',
            schema: { type: 'integer', minimum: 1 },
          },
        ],
        responses: {
          '200': { description: 'One page', content: { 'application/json': { schema: { $ref: '#/components/schemas/ChangedAreas' } } } },
          '400': error,
          '401': error,
          '404': error,
          '409': error,
        },
      },
    },
  },
  components: {
    securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
    responses: {
      Error: { description: 'A coded error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
    },
    schemas: {
      Disk: {
        type: 'object',
        required: ['name', 'size', 'readOnly', 'tracked', 'exportName', 'snapshots'],
        properties: {
          name: { type: 'string' },
          size: { type: 'integer', description: 'Bytes' },
          readOnly: { type: 'boolean' },
          tracked: { type: 'boolean', description: 'Changes are tracked (snapshots and change queries work)' },
          exportName: { type: 'string', description: 'The NBD export name (read-write)' },
          uri: { type: 'string', description: 'The NBD URI of the export' },
          granularity: { type: 'integer', description: 'Bytes per tracked block' },
          changeId: { type: 'string', description: 'The newest change ID handed out' },
          bitmapContext: { type: 'string', description: 'NBD meta context with the changes since the newest change ID' },
          snapshots: { type: 'array', items: { $ref: '#/components/schemas/Snapshot' } },
        },
      },
      Snapshot: {
        type: 'object',
        required: ['id', 'disk', 'changeId', 'created', 'status', 'exportName'],
        properties: {
          id: { type: 'string' },
          disk: { type: 'string' },
          changeId: { type: 'string', description: 'Changes up to the snapshot' },
          created: { type: 'string', format: 'date-time' },
          status: { type: 'string', enum: ['active', 'deleting'] },
          expires: { type: 'string', format: 'date-time', description: 'When its lease runs out (leased snapshots only)' },
          exportName: { type: 'string', description: 'The read-only NBD export of the frozen disk' },
          uri: { type: 'string' },
        },
      },
      ChangedAreas: {
        type: 'object',
        required: ['startOffset', 'length', 'areas'],
        properties: {
          startOffset: { type: 'integer' },
          length: { type: 'integer', description: 'The page covers [startOffset, startOffset + length)' },
          areas: {
            type: 'array',
            items: {
              type: 'object',
              required: ['start', 'length'],
              properties: { start: { type: 'integer' }, length: { type: 'integer' } },
            },
          },
        },
      },
      Error: {
        type: 'object',
        required: ['error'],
        properties: {
          error: {
            type: 'object',
            required: ['code', 'message'],
            properties: {
              code: { type: 'string', pattern: '^ERR_VD_[A-Z_]+$' },
              message: { type: 'string' },
              details: { type: 'object' },
            },
          },
        },
      },
    },
  },
} as const;
