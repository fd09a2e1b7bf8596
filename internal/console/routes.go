package console

import "net/http"

func (c *Console) routes() {
	c.mux.HandleFunc("GET /ui/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/rollouts", http.StatusSeeOther)
	})
	c.platformRoutes()
	c.rolloutRoutes()
	c.mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, http.StatusNotFound, "no such page: "+r.URL.Path)
	})
}
