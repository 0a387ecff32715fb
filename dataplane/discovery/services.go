package discovery

import "slices"

// Services returns the names in Consul's catalog as last seen (nil before
// its first answer), sorted. Transparent interception allocates virtual
// IPs over them and prefetches their endpoints.
func (c *Consul) Services() []string {
	cat := c.catalog.Load()
	if cat == nil {
		return nil
	}
	out := make([]string, 0, len(*cat))
	for name := range *cat {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}
