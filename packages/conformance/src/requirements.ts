import type { Disk } from '@vd/core';

/**
 * What a case needs from the disk the factory returns. Each requirement is a predicate over the
 * disk's declared capabilities (and its size), so every skip names the capability that caused it.
 */
export type Requirement = 'write' | 'read-only' | 'zero' | 'trim' | 'fua' | 'alignment' | 'split';

interface RequirementRule {
  /** What the case needs, for the README and skip messages. */
  needs: string;
  met(disk: Disk): boolean;
  /** What the disk declared instead, for the skip message. */
  declared(disk: Disk): string;
}

export const requirementRules: Record<Requirement, RequirementRule> = {
  write: {
    needs: 'a writable disk',
    met: (d) => !d.capabilities.readOnly,
    declared: () => 'capabilities.readOnly is true',
  },
  'read-only': {
    needs: 'a read-only disk from factory({ readOnly: true })',
    met: (d) => d.capabilities.readOnly,
    declared: () => 'factory({ readOnly: true }) returned a disk with capabilities.readOnly false',
  },
  zero: {
    needs: "capabilities.zero other than 'none'",
    met: (d) => !d.capabilities.readOnly && d.capabilities.zero !== 'none',
    declared: (d) => `capabilities.zero is '${d.capabilities.zero}'`,
  },
  trim: {
    needs: "capabilities.trim other than 'none'",
    met: (d) => !d.capabilities.readOnly && d.capabilities.trim !== 'none',
    declared: (d) => `capabilities.trim is '${d.capabilities.trim}'`,
  },
  fua: {
    needs: "capabilities.fua other than 'none'",
    met: (d) => !d.capabilities.readOnly && d.capabilities.fua !== 'none',
    declared: (d) => `capabilities.fua is '${d.capabilities.fua}'`,
  },
  alignment: {
    needs: 'capabilities.blockSize.minimum > 1',
    met: (d) => d.capabilities.blockSize.minimum > 1,
    declared: (d) => `capabilities.blockSize.minimum is ${d.capabilities.blockSize.minimum}`,
  },
  split: {
    needs: 'capabilities.blockSize.maximum small enough that 3 maximum-size requests fit in the disk',
    met: (d) => splitSpan(d) <= d.size,
    declared: (d) => `capabilities.blockSize.maximum is ${d.capabilities.blockSize.maximum} and the disk has ${d.size} bytes`,
  },
};

/** Bytes the block-size-limit case needs: three maximum-size requests and some odd blocks. */
export function splitSpan(disk: Disk): number {
  const { minimum, maximum } = disk.capabilities.blockSize;
  return 3 * maximum + 8 * minimum;
}

/** Why a disk cannot run a case, one sentence per unmet requirement; empty when it can. */
export function unmetRequirements(requires: readonly Requirement[], disk: Disk): string[] {
  const out: string[] = [];
  for (const r of requires) {
    const rule = requirementRules[r];
    if (!rule.met(disk)) out.push(`requires ${r} (${rule.needs}); ${rule.declared(disk)}`);
  }
  return out;
}
