pub mod fasttext {
    #[derive(Debug, thiserror::Error)]
    #[error("x")]
    pub struct FastTextError;
}
