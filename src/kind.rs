//! What every kind, source or sink, has in common: how its configuration reports problems,
//! how building it fails, the boxed futures its runtime trait returns, and the [`registry!`]
//! macro that lists the kinds.

use std::future::Future;
use std::pin::Pin;

use crate::http::ClientBuildError;

/// Configuration problems as `(field relative to the kind's entry, message)`; the caller adds
/// where the entry is, and `validate` turns the field into a line and column.
pub type Problems = Vec<(String, String)>;

/// A future the agent awaits through a trait object: one small allocation per fetch or write,
/// next to an HTTP exchange or an fsync. Boxed, these futures also keep an idle source's task
/// small (BENCHMARKS.md).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a kind could not be built from a checked configuration (a file it names is unreadable).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("{0}")]
    Invalid(String),
}

/// Declares the kinds of one family, one line each: `"name" => Variant(module::Config)`.
///
/// It declares each `module` (the kind's file), the serde enum that selects a kind by its name,
/// and, on that enum, `name()` (the kind's name, for logs and metrics) and `kind()` (the
/// configuration as the family's trait object). After the enum, `per kind async fn f(ctx: T);`
/// lines declare kind-level hooks: `Enum::f(ctx)` calls `<Config as Trait>::f(ctx)` for every
/// registered kind in turn, whether or not a configured entry uses it. This is the one place a
/// new kind is added.
macro_rules! registry {
    (
        $(#[$meta:meta])*
        pub enum $Enum:ident: dyn $Trait:ident $kinds:tt
        $( $(#[$hook_doc:meta])* per kind async fn $hook:ident($ctx:ident: $Ctx:ty); )*
    ) => {
        registry!(@enum [$(#[$meta])*] $Enum $Trait $kinds);
        $( registry!(@hook $Enum $Trait $kinds [$(#[$hook_doc])*] $hook $ctx $Ctx); )*
    };
    (
        @enum [$($attr:tt)*] $Enum:ident $Trait:ident {
            $( $(#[$doc:meta])* $name:literal => $Variant:ident($module:ident::$Config:ident), )*
        }
    ) => {
        $( pub mod $module; )*

        $($attr)*
        pub enum $Enum {
            $( $(#[$doc])* #[serde(rename = $name)] $Variant(Box<$module::$Config>), )*
        }

        impl $Enum {
            /// The kind's name as written in the configuration.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Self::$Variant(_) => $name, )*
                }
            }

            /// The kind's configuration, through the family's trait.
            pub fn kind(&self) -> &dyn $Trait {
                match self {
                    $( Self::$Variant(config) => &**config, )*
                }
            }
        }
    };
    (
        @hook $Enum:ident $Trait:ident {
            $( $(#[$doc:meta])* $name:literal => $Variant:ident($module:ident::$Config:ident), )*
        }
        [$($hook_doc:tt)*] $hook:ident $ctx:ident $Ctx:ty
    ) => {
        impl $Enum {
            $($hook_doc)*
            pub async fn $hook($ctx: $Ctx) {
                $( <$module::$Config as $Trait>::$hook($ctx).await; )*
            }
        }
    };
}
pub(crate) use registry;
