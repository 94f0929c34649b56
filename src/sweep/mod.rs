//! `exp sweep` (docs/design.md §5): many runs of one experiment — a grid, random samples and
//! seeds from `[sweep]` — each an ordinary run recorded on the sweep's own feature branch.

pub mod plan;
pub mod state;
