package console

// platformRoutes serves the platforms, domain inventory and change pages.
func (c *Console) platformRoutes() {}
