// Core runs the published suite on its own sources. The import is by path, not by package name:
// @vd/conformance depends on @vd/core, and a dependency back would make a cycle in the workspace
// graph (turbo refuses those).
export { runConformance } from '../../../conformance/src/vitest.js';
