//! Matmuls on Burn's CubeCL matmul kernels (`cubek-matmul`) with the algorithm chosen by name
//! ([`super::super::matmul::MatmulChoice`]) instead of Burn's default.
//!
//! Without Burn's `autotune` feature every matmul runs `Strategy::Auto`: the simple cyclic
//! tensor-core (`cmma`) algorithm at its default tiles, or the simple unit algorithm where the
//! device has no tensor cores for the dtype (wgpu in f32, lavapipe). With autotune, Burn times
//! some twenty algorithms per shape on first use. The choice here is one of those algorithms,
//! run at every shape without tuning — to measure them side by side in one binary and to run the
//! fastest. An algorithm that cannot run a matmul (no tensor cores, a layout or size it refuses)
//! leaves it to `Strategy::Auto`; [`counts`] says how often each happened.

use burn::tensor::Shape;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubek::matmul::components::tile::TileMatmulKind;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulSetupError};
use cubek::matmul::launch::{Strategy, launch_ref};
use cubek::matmul::routines::double_buffering::DoubleBufferingArgs;
use cubek::matmul::routines::double_unit::DoubleUnitSelectionArgs;
use cubek::matmul::routines::ordered_double_buffering::OrderedSelectionArgs;
use cubek::matmul::routines::simple::SimpleArgs;
use cubek::matmul::routines::simple_unit::SimpleUnitSelectionArgs;
use cubek::matmul::routines::{BlueprintStrategy, TileSizeSelection};
use cubek::std::InputBinding;

use super::{KernelOp, Loads, Tally, empty, missing_for};
use crate::kernels::matmul::MatmulChoice;

/// `[chosen algorithm ran, fell back to Strategy::Auto]`.
static COUNTS: Tally<2> = Tally::new();

/// How many matmuls through [`matmul_on`] ran the chosen algorithm and how many fell back.
pub fn counts() -> [u64; 2] {
    COUNTS.get()
}

/// The algorithm behind a choice (`None` for [`MatmulChoice::Burn`], which is not launched here).
fn strategy(choice: MatmulChoice) -> Option<Strategy> {
    use MatmulChoice as C;
    let simple = |multi_rows| SimpleArgs {
        multi_rows,
        tile_matmul: TileMatmulKind::Cmma,
    };
    let double = |specialized| DoubleBufferingArgs {
        specialized,
        tile_matmul: TileMatmulKind::Cmma,
    };
    let ordered = |row_count| OrderedSelectionArgs {
        partition_k: Some(2),
        row_count: Some(row_count),
        rows_per_plane: Some(2),
        tile_matmul: TileMatmulKind::Cmma,
    };
    let simple_unit = |tile_size| {
        Strategy::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs {
            tile_size,
        }))
    };
    let double_unit = |tile_size| {
        Strategy::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs {
            tile_size,
        }))
    };
    Some(match choice {
        C::Burn => return None,
        C::Auto => Strategy::Auto,
        C::SimpleCyclic => Strategy::SimpleCyclicCmma(BlueprintStrategy::Inferred(simple(false))),
        C::SimpleCyclicMultiRow => {
            Strategy::SimpleCyclicCmma(BlueprintStrategy::Inferred(simple(true)))
        }
        C::SimpleCyclicMma => Strategy::SimpleCyclicMma(BlueprintStrategy::Inferred(simple(false))),
        C::DoubleCyclic => Strategy::DoubleCyclicCmma(BlueprintStrategy::Inferred(double(false))),
        C::DoubleCyclicSpecialized => {
            Strategy::DoubleCyclicCmma(BlueprintStrategy::Inferred(double(true)))
        }
        C::DoubleCyclicMma => Strategy::DoubleCyclicMma(BlueprintStrategy::Inferred(double(false))),
        C::OrderedDouble4 => Strategy::OrderedDoubleCmma(BlueprintStrategy::Inferred(ordered(4))),
        C::OrderedDouble8 => Strategy::OrderedDoubleCmma(BlueprintStrategy::Inferred(ordered(8))),
        C::OrderedDouble8Mma => Strategy::OrderedDoubleMma(BlueprintStrategy::Inferred(ordered(8))),
        C::SpecializedCyclic => {
            Strategy::SpecializedCyclicCmma(BlueprintStrategy::Inferred(().into()))
        }
        C::SpecializedCyclicMma => {
            Strategy::SpecializedCyclicMma(BlueprintStrategy::Inferred(().into()))
        }
        C::SimpleTma => Strategy::SimpleTmaCmma(BlueprintStrategy::Inferred(simple(false))),
        C::SimpleTmaMultiRow => Strategy::SimpleTmaCmma(BlueprintStrategy::Inferred(simple(true))),
        C::SpecializedTma => Strategy::SpecializedTmaCmma(BlueprintStrategy::Inferred(().into())),
        C::SimpleUnitMax => simple_unit(TileSizeSelection::MaxTileSize),
        C::SimpleUnitMin => simple_unit(TileSizeSelection::MinTileSize),
        C::DoubleUnitMax => double_unit(TileSizeSelection::MaxTileSize),
        C::DoubleUnitMin => double_unit(TileSizeSelection::MinTileSize),
    })
}

/// `[.., m, n]` of `lhs` `[.., m, k]` times `rhs` `[.., k, n]`, batch dimensions broadcast
/// (each equal or 1 on one side); `None` for anything else (what [`matmul_on`] takes).
pub(crate) fn output_shape(lhs: &[usize], rhs: &[usize]) -> Option<Vec<usize>> {
    let rank = lhs.len();
    if rank < 2 || rhs.len() != rank || lhs[rank - 1] != rhs[rank - 2] {
        return None;
    }
    let mut out = Vec::with_capacity(rank);
    for (&a, &b) in lhs[..rank - 2].iter().zip(&rhs[..rank - 2]) {
        out.push(match (a, b) {
            _ if a == b => a,
            (1, b) => b,
            (a, 1) => a,
            _ => return None,
        });
    }
    out.extend([lhs[rank - 2], rhs[rank - 1]]);
    Some(out)
}

fn launch<R: CubeRuntime>(
    strategy: &Strategy,
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    out: &CubeTensor<R>,
) -> Result<(), MatmulSetupError> {
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: lhs.dtype.into(),
        rhs: rhs.dtype.into(),
        out: out.dtype.into(),
    });
    launch_ref(
        strategy,
        &out.client,
        InputBinding::new(lhs.clone().binding(), lhs.dtype.into()),
        InputBinding::new(rhs.clone().binding(), lhs.dtype.into()),
        out.clone().binding(),
        &mut dtypes,
    )
}

/// `lhs · rhs` in `lhs`'s dtype by the algorithm of `choice` (by `Strategy::Auto` where it
/// refuses), for tensors of one dtype whose shapes multiply; `None` for [`MatmulChoice::Burn`]
/// and for shapes that do not.
pub fn matmul_on<R: CubeRuntime>(
    choice: MatmulChoice,
    lhs: CubeTensor<R>,
    rhs: CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    let strategy = strategy(choice)?;
    let shape = output_shape(lhs.meta.shape(), rhs.meta.shape())?;
    if lhs.dtype != rhs.dtype {
        return None;
    }
    let out = empty(&lhs, Shape::from(shape), lhs.dtype);
    let loads = match choice {
        MatmulChoice::SpecializedCyclic | MatmulChoice::SpecializedCyclicMma => Loads::Async,
        MatmulChoice::SimpleTma
        | MatmulChoice::SimpleTmaMultiRow
        | MatmulChoice::SpecializedTma => Loads::Tma,
        _ => Loads::Sync,
    };
    let launched = match missing_for(&lhs, loads) {
        Some(missing) => Err(MatmulSetupError::InvalidConfig(Box::new(missing))),
        None => launch(&strategy, &lhs, &rhs, &out),
    };
    match launched {
        Ok(()) => COUNTS.add(0),
        Err(err) => {
            tracing::debug!("matmul algorithm {choice:?} refused the matmul ({err:?}); Auto runs");
            COUNTS.add(1);
            // Burn's own matmul is this launch; it runs every matmul Burn runs.
            if let Err(err) = launch(&Strategy::Auto, &lhs, &rhs, &out) {
                panic!("matmul: {err:?}");
            }
        }
    }
    Some(out)
}

/// [`matmul_on`] as a kernel op (under fusion, a custom operation in the stream).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatmulOp(pub MatmulChoice);

impl KernelOp<2, 1> for MatmulOp {
    fn run<R: CubeRuntime>(&self, [lhs, rhs]: [CubeTensor<R>; 2]) -> [CubeTensor<R>; 1] {
        [matmul_on(self.0, lhs, rhs).expect("shapes and dtypes were checked before the launch")]
    }
}

#[cfg(test)]
mod tests {
    use super::output_shape;

    #[test]
    fn output_shapes_broadcast_batches_and_refuse_mismatches() {
        assert_eq!(output_shape(&[8, 3], &[3, 5]), Some(vec![8, 5]));
        assert_eq!(output_shape(&[2, 8, 3], &[1, 3, 5]), Some(vec![2, 8, 5]));
        assert_eq!(output_shape(&[1, 8, 3], &[4, 3, 5]), Some(vec![4, 8, 5]));
        assert_eq!(output_shape(&[2, 8, 3], &[4, 3, 5]), None);
        assert_eq!(output_shape(&[8, 3], &[4, 5]), None);
        assert_eq!(output_shape(&[8, 3], &[2, 3, 5]), None);
        assert_eq!(output_shape(&[3], &[3]), None);
    }
}
