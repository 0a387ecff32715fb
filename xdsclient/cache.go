package xdsclient

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// cacheFile is the on-disk form of a Resources: readable JSON, one entry
// per type URL, each resource as protojson of an Any.
type cacheFile struct {
	Types map[string]cachedType `json:"types"`
}

type cachedType struct {
	Version   string            `json:"version"`
	Resources []json.RawMessage `json:"resources"`
	// ResourceVersions are the delta versions of the resources, sent
	// back to the control plane after a restart.
	ResourceVersions map[string]string `json:"resource_versions,omitempty"`
}

// SaveCache writes r to path atomically (temp file, fsync, rename), so a
// crash never leaves a half-written cache.
func SaveCache(path string, r Resources) error {
	cf := cacheFile{Types: map[string]cachedType{}}
	add := func(typeURL string, msgs []proto.Message) error {
		ct := cachedType{Version: r.Versions[typeURL], ResourceVersions: r.ResourceVersions[typeURL]}
		for _, m := range msgs {
			a, err := anypb.New(m)
			if err != nil {
				return err
			}
			b, err := protojson.Marshal(a)
			if err != nil {
				return err
			}
			ct.Resources = append(ct.Resources, b)
		}
		cf.Types[typeURL] = ct
		return nil
	}
	for _, step := range []struct {
		t    string
		msgs []proto.Message
	}{
		{resource.ListenerType, values(r.Listeners)},
		{resource.RouteType, values(r.Routes)},
		{resource.ClusterType, values(r.Clusters)},
		{resource.EndpointType, values(r.Endpoints)},
	} {
		if err := add(step.t, step.msgs); err != nil {
			return fmt.Errorf("encode xds cache: %w", err)
		}
	}
	data, err := json.MarshalIndent(cf, "", " ")
	if err != nil {
		return fmt.Errorf("encode xds cache: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("create cache dir: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".xds-cache-*")
	if err != nil {
		return fmt.Errorf("write xds cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write xds cache: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync xds cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write xds cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace xds cache: %w", err)
	}
	return nil
}

// LoadCache reads a cache written by SaveCache, validating every resource.
func LoadCache(path string) (Resources, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Resources{}, err
	}
	var cf cacheFile
	if err := json.Unmarshal(data, &cf); err != nil {
		return Resources{}, fmt.Errorf("xds cache %s: %w", path, err)
	}
	var r Resources
	ensureMaps(&r)
	for typeURL, ct := range cf.Types {
		r.Versions[typeURL] = ct.Version
		if len(ct.ResourceVersions) > 0 {
			r.ResourceVersions[typeURL] = ct.ResourceVersions
		}
		for _, raw := range ct.Resources {
			a := &anypb.Any{}
			if err := protojson.Unmarshal(raw, a); err != nil {
				return Resources{}, fmt.Errorf("xds cache %s: %w", path, err)
			}
			msg, name, err := Decode(a)
			if err != nil {
				return Resources{}, fmt.Errorf("xds cache %s: %w", path, err)
			}
			r.Put(msg, name)
		}
	}
	return r, nil
}

func values[M proto.Message](m map[string]M) []proto.Message {
	out := make([]proto.Message, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
