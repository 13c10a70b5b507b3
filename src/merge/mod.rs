//! Merging: one function per method over one tensor of every input at a time (a stack (N, …) on a
//! device), so that whole models stream through tensor by tensor. `folder` merges model folders and
//! `adapters` PEFT adapters on top of these; `params` resolves per-layer and per-tensor settings.
//!
//! Two semantics are offered where PEFT and mergekit differ (see docs/merging.md):
//! `Semantics::Peft` follows `peft.utils.merge_utils` exactly, `Semantics::Mergekit` follows
//! mergekit's generalized task arithmetic.

pub mod adapters;
pub mod delta_guided;
pub mod fisher;
pub mod folder;
pub mod linear;
pub mod model_stock;
pub mod params;
pub mod regmean;
pub mod slerp;
pub mod sparsify;
pub mod task_arithmetic;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A merging method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Linear,
    TaskArithmetic,
    MagnitudePrune,
    Ties,
    DareLinear,
    DareTies,
    Breadcrumbs,
    BreadcrumbsTies,
    Della,
    DellaLinear,
    Slerp,
    ModelStock,
    Fisher,
    RegMean,
    DeltaGuided,
}

pub const METHODS: &[(&str, Method)] = &[
    ("linear", Method::Linear),
    ("task-arithmetic", Method::TaskArithmetic),
    ("magnitude-prune", Method::MagnitudePrune),
    ("ties", Method::Ties),
    ("dare-linear", Method::DareLinear),
    ("dare-ties", Method::DareTies),
    ("breadcrumbs", Method::Breadcrumbs),
    ("breadcrumbs-ties", Method::BreadcrumbsTies),
    ("della", Method::Della),
    ("della-linear", Method::DellaLinear),
    ("slerp", Method::Slerp),
    ("model-stock", Method::ModelStock),
    ("fisher", Method::Fisher),
    ("regmean", Method::RegMean),
    ("delta-guided", Method::DeltaGuided),
];

impl Method {
    /// Parses a method name (`task-arithmetic` or mergekit's `task_arithmetic`).
    pub fn parse(s: &str) -> Result<Method> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        METHODS.iter().find(|(n, _)| *n == key).map(|&(_, m)| m).ok_or_else(|| {
            let names: Vec<&str> = METHODS.iter().map(|(n, _)| *n).collect();
            Error::invalid(format!("unknown merge method `{s}`; one of: {}", names.join(", ")))
        })
    }

    pub fn name(self) -> &'static str {
        METHODS.iter().find(|(_, m)| *m == self).unwrap().0
    }

    /// Task-vector methods need a base model (θ0); SLERP and model stock use one too.
    pub fn needs_base(self) -> bool {
        !matches!(self, Method::Linear | Method::Fisher | Method::RegMean)
    }

    /// How the method trims each task vector, if it does.
    pub fn sparsifier(self) -> Option<sparsify::Kind> {
        use sparsify::Kind;
        match self {
            Method::MagnitudePrune | Method::Ties => Some(Kind::Magnitude),
            Method::DareLinear | Method::DareTies => Some(Kind::Random),
            Method::Breadcrumbs | Method::BreadcrumbsTies => Some(Kind::Breadcrumbs),
            Method::Della | Method::DellaLinear => Some(Kind::Della),
            _ => None,
        }
    }

    /// Whether the merge elects a sign per entry (TIES) after trimming.
    pub fn elects_sign(self) -> bool {
        matches!(self, Method::Ties | Method::DareTies | Method::BreadcrumbsTies | Method::Della)
    }

    /// mergekit's defaults for `normalize` and `rescale` (its method registry).
    pub fn mergekit_defaults(self) -> (bool, bool) {
        match self {
            Method::Ties | Method::Della => (true, self == Method::Della),
            Method::DareTies | Method::DareLinear | Method::DellaLinear => (false, true),
            Method::Linear | Method::RegMean => (true, false),
            _ => (false, false),
        }
    }
}

/// Whose definitions the task-vector methods follow where PEFT and mergekit differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Semantics {
    /// peft.utils.merge_utils: sign elected on the unweighted trimmed vectors, TIES divided by the
    /// count of agreeing entries, DARE rescaled by 1/density.
    #[default]
    Peft,
    /// mergekit: sign elected on the weighted vectors, `normalize` dividing by Σ weight·mask, DARE and
    /// DELLA rescaled to the L1 norm of the untrimmed vector, per-method defaults.
    Mergekit,
}

impl Semantics {
    pub fn parse(s: &str) -> Result<Semantics> {
        match s {
            "peft" => Ok(Semantics::Peft),
            "mergekit" => Ok(Semantics::Mergekit),
            _ => Err(Error::invalid(format!("--semantics {s}: one of peft, mergekit"))),
        }
    }
}

/// TIES' sign election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SignRule {
    /// The sign of the sum of the values (PEFT `total`, mergekit `sum`).
    #[default]
    Total,
    /// The sign with more votes (PEFT `frequency`, mergekit `count`).
    Frequency,
}

impl SignRule {
    pub fn parse(s: &str) -> Result<SignRule> {
        match s {
            "total" | "sum" => Ok(SignRule::Total),
            "frequency" | "count" => Ok(SignRule::Frequency),
            _ => Err(Error::invalid(format!("--sign {s}: one of total, frequency"))),
        }
    }
}

/// Everything a method needs for one tensor, resolved from the per-layer and per-name settings.
#[derive(Clone, Debug)]
pub struct TensorSettings {
    /// One weight per input (not normalised).
    pub weights: Vec<f32>,
    /// One density per input, in (0, 1].
    pub density: Vec<f32>,
    /// Scale of the merged task vector.
    pub lambda: f32,
    /// SLERP's interpolation factor (0 gives the base).
    pub t: f32,
    pub sign: SignRule,
    pub semantics: Semantics,
    pub seed: u32,
    /// Divide by the sum of the weights (linear; mergekit's task-vector methods).
    pub normalize: bool,
    /// Rescale trimmed vectors (DARE, DELLA).
    pub rescale: bool,
    /// Breadcrumbs: fraction of the largest entries dropped.
    pub gamma: f32,
    /// DELLA: keep probabilities span density ± epsilon.
    pub epsilon: f32,
    /// Fisher: values below are raised to it.
    pub fisher_floor: f32,
    /// Delta-guided: temperature of the weights |θᵢ − θ0|^(1/T).
    pub temperature: f32,
}

impl TensorSettings {
    /// Defaults for `inputs` inputs under `semantics` for `method` (weights 1, density 1).
    pub fn new(method: Method, inputs: usize, semantics: Semantics) -> TensorSettings {
        let (normalize, rescale) = match semantics {
            Semantics::Mergekit => method.mergekit_defaults(),
            Semantics::Peft => (matches!(method, Method::Linear | Method::RegMean), true),
        };
        TensorSettings {
            weights: vec![1.0; inputs],
            density: vec![1.0; inputs],
            lambda: 1.0,
            t: 0.5,
            sign: SignRule::Total,
            semantics,
            seed: 0,
            normalize,
            rescale,
            gamma: 0.01,
            epsilon: 0.15,
            fisher_floor: 1e-6,
            temperature: 1.0,
        }
    }

    /// Checks the values a method uses; `what` names the tensor in errors.
    pub fn check(&self, method: Method, inputs: usize, what: &str) -> Result<()> {
        let bad = |m: String| Error::invalid(format!("{what}: {m}"));
        if self.weights.len() != inputs {
            return Err(bad(format!("{} weights for {inputs} inputs", self.weights.len())));
        }
        if self.density.len() != inputs {
            return Err(bad(format!("{} densities for {inputs} inputs", self.density.len())));
        }
        if method.sparsifier().is_some() {
            if let Some(d) = self.density.iter().find(|d| !(**d > 0.0 && **d <= 1.0)) {
                return Err(bad(format!("density {d} is outside (0, 1]")));
            }
        }
        if method.sparsifier() == Some(sparsify::Kind::Della) {
            for &d in &self.density {
                if d < 1.0 && (d - self.epsilon <= 0.0 || d + self.epsilon >= 1.0) {
                    return Err(bad(format!(
                        "DELLA needs density ± epsilon inside (0, 1), got density {d}, epsilon {}",
                        self.epsilon
                    )));
                }
            }
        }
        if method == Method::Slerp && inputs != 2 {
            return Err(bad(format!("SLERP merges exactly two models (the base and one other), got {inputs}")));
        }
        if method == Method::ModelStock && inputs < 2 {
            return Err(bad(format!("model stock needs a base and at least two models, got {inputs}")));
        }
        if method == Method::DeltaGuided && self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(bad(format!("temperature {} must be positive", self.temperature)));
        }
        if method.normalizes_by_sum() && self.normalize && self.weights.iter().sum::<f32>() == 0.0 {
            return Err(bad("the weights sum to zero, so they cannot be normalised".into()));
        }
        Ok(())
    }
}

impl Method {
    fn normalizes_by_sum(self) -> bool {
        matches!(self, Method::Linear)
    }
}

/// The inputs of one tensor: the N models' values stacked (N, …), the base's, and for Fisher merging
/// the N Fisher diagonals stacked the same way.
pub struct TensorInputs<'a> {
    pub name: &'a str,
    pub models: &'a Tensor,
    pub base: Option<&'a Tensor>,
    pub fisher: Option<&'a Tensor>,
}

/// Merges one tensor with `method` (RegMean's linear weights go through `regmean` instead).
pub async fn merge_tensor(method: Method, s: &TensorSettings, x: &TensorInputs<'_>) -> Result<Tensor> {
    let inputs = x.models.dim(0);
    s.check(method, inputs, x.name)?;
    let base = || x.base.ok_or_else(|| Error::invalid(format!("{}: {} needs a base model", x.name, method.name())));
    match method {
        Method::Linear | Method::RegMean => linear::merge(x.models, s),
        Method::Slerp => slerp::merge(x.models, s.t).await,
        Method::ModelStock => model_stock::merge(x.models, base()?).await,
        Method::Fisher => {
            let f = x
                .fisher
                .ok_or_else(|| Error::invalid(format!("{}: Fisher merging needs a Fisher per input", x.name)))?;
            fisher::merge(x.models, f, s)
        }
        Method::DeltaGuided => delta_guided::merge(x.models, base()?, s),
        _ => task_arithmetic::merge(method, x.models, base()?, s).await,
    }
}
