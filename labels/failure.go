package labels

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/microscaling/microscaling/scaler/egress"
)

// registryCodes are the error codes of the distribution spec: a registry's
// code is named in an Event only when it is one of them.
var registryCodes = []transport.ErrorCode{
	transport.BlobUnknownErrorCode, transport.DigestInvalidErrorCode, transport.ManifestBlobUnknownErrorCode,
	transport.ManifestInvalidErrorCode, transport.ManifestUnknownErrorCode, transport.NameInvalidErrorCode,
	transport.NameUnknownErrorCode, transport.TagInvalidErrorCode, transport.UnauthorizedErrorCode,
	transport.DeniedErrorCode, transport.UnsupportedErrorCode, transport.TooManyRequestsErrorCode,
	transport.UnavailableErrorCode,
}

// realmRefused is how the registry library says it refused a token realm
// itself (one written as a private or link-local address, or a scheme
// downgrade) before our dialer saw it; it has no error value to match.
const realmRefused = "invalid realm in www-authenticate"

// failure says why reading image failed, for the tenant's Event: the image
// (their own reference) and a class of error, never the registry's words
// (its messages, details and bodies are its to choose, and go only to the
// operator's logs).
func failure(image string, err error) string {
	var te *transport.Error
	var ne net.Error
	cls := "registry unreachable, or not an image"
	switch {
	case errors.Is(err, errConfigTooLarge):
		cls = fmt.Sprintf("image config over %d bytes", MaxConfigBytes)
	case errors.Is(err, egress.ErrNotAllowed), strings.Contains(err.Error(), realmRefused):
		cls = "registry or token realm address not allowed"
	case errors.Is(err, errAnswerTooLarge):
		cls = fmt.Sprintf("registry answer (manifest or index) over %d bytes", MaxAnswerBytes)
	case errors.As(err, &te):
		cls = fmt.Sprintf("registry answered HTTP %d", te.StatusCode)
		for _, d := range te.Errors {
			if slices.Contains(registryCodes, d.Code) {
				cls += " " + string(d.Code)
				break
			}
		}
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		cls = "registry timeout"
	}
	return fmt.Sprintf("image %q: %s", image, cls)
}
