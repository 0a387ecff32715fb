package chain

// app forwards an inbound request to the local app; it ends the inbound
// path.
type app struct{ h *Handlers }

func buildApp(t *InboundTarget) (Step, error) { return &app{h: t.h}, nil }

func (*app) Name() string { return "app" }

func (s *app) Serve(x *Exchange, _ Next) error {
	x.Rec.SetUpstream(s.h.local.Service, x.app)
	if err := s.h.fwd.Forward(x.W, x.R, x.app); err != nil {
		s.h.log.Debug().Err(err).Str("app", x.app).Msg("forward to app failed")
		return err
	}
	return nil
}
