"""Provider adapters: one module per provider, each implementing `base.Provider`."""
