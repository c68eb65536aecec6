use modelroute_types::{Code, ErrorCode};

/// Errors of the routing engine.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    /// The slug is not in the catalogue.
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// Every route of the model was excluded.
    #[error("no route of `{model}` can serve this request: {reason}")]
    NoRoute {
        /// The model slug.
        model: String,
        /// Why the routes were excluded (client-safe; no provider names).
        reason: String,
    },
    /// Every route of the model is failing right now (all breakers open).
    #[error("every route of `{0}` is failing right now; retry shortly")]
    Unavailable(String),
    /// The catalogue configuration is invalid.
    #[error("catalogue: {0}")]
    InvalidConfig(String),
}

impl ErrorCode for RoutingError {
    fn code(&self) -> Code {
        match self {
            Self::ModelNotFound(_) => Code::ModelNotFound,
            Self::NoRoute { .. } => Code::NoRouteAvailable,
            Self::Unavailable(_) => Code::Overloaded,
            Self::InvalidConfig(_) => Code::InvalidConfig,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }
}
