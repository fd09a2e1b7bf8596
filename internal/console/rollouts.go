package console

// rolloutRoutes serves the rollout pages and the new change/rollout form.
func (c *Console) rolloutRoutes() {}
