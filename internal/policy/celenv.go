package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"
)

// celCostLimit bounds the work one CEL evaluation may do; a program that
// exceeds it fails, and a failed condition never opens access.
const celCostLimit = 100_000

// maxCELLen bounds the length of one CEL expression.
const maxCELLen = 4096

// celEnvs are the two CEL environments. They share the variables that mean
// the same thing in both (subject, issuer, actors).
type celEnvs struct {
	authz    *cel.Env
	exchange *cel.Env
}

// celCheck is a type-checked CEL expression.
type celCheck struct {
	ast *cel.Ast
}

func newCELEnvs() (*celEnvs, error) {
	common := []cel.EnvOption{
		cel.ParserExpressionSizeLimit(maxCELLen),
		cel.ParserRecursionLimit(64),
		ext.Strings(),
		cel.Variable("subject", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("issuer", cel.StringType),
		cel.Variable("actors", cel.ListType(cel.StringType)),
	}
	authz, err := cel.NewEnv(append(common,
		cel.Variable("workload", cel.StringType),
		cel.Variable("peer", cel.StringType),
		cel.Variable("hasToken", cel.BoolType),
		cel.Variable("method", cel.StringType),
		cel.Variable("path", cel.StringType),
		cel.Variable("host", cel.StringType),
		cel.Variable("port", cel.IntType),
		cel.Variable("headers", cel.MapType(cel.StringType, cel.StringType)),
	)...)
	if err != nil {
		return nil, fmt.Errorf("policy: cel environment: %w", err)
	}
	exchange, err := cel.NewEnv(append(common,
		cel.Variable("client", cel.StringType),
		cel.Variable("audience", cel.StringType),
		cel.Variable("scopes", cel.ListType(cel.StringType)),
		cel.Variable("grantType", cel.StringType),
	)...)
	if err != nil {
		return nil, fmt.Errorf("policy: cel environment: %w", err)
	}
	return &celEnvs{authz: authz, exchange: exchange}, nil
}

// checkCEL parses and type-checks src; it must return a bool.
func checkCEL(env *cel.Env, src string) (celCheck, error) {
	if len(src) > maxCELLen {
		return celCheck{}, fmt.Errorf("CEL expression longer than %d bytes", maxCELLen)
	}
	if strings.TrimSpace(src) == "" {
		return celCheck{}, errors.New("empty CEL expression")
	}
	ast, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		errs := iss.Errors()
		if len(errs) == 0 {
			return celCheck{}, fmt.Errorf("CEL does not compile: %v", iss.Err())
		}
		e := errs[0]
		loc := e.Location
		return celCheck{}, fmt.Errorf("CEL does not compile: %s (at %d:%d)", e.Message, loc.Line(), loc.Column()+1)
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		return celCheck{}, fmt.Errorf("CEL must return a bool, not %s", ast.OutputType())
	}
	return celCheck{ast: ast}, nil
}

func program(env *cel.Env, c celCheck) (cel.Program, error) {
	if c.ast == nil {
		return nil, nil
	}
	return env.Program(c.ast, cel.CostLimit(celCostLimit))
}

// evalBool runs prg; ok is false when it could not be evaluated (runtime
// error, missing key, cost limit), with the reason in err.
func evalBool(prg cel.Program, act interpreter.Activation) (v bool, err error) {
	out, _, err := prg.Eval(act)
	if err != nil {
		return false, err
	}
	b, isBool := out.Value().(bool)
	if !isBool {
		return false, errors.New("CEL did not return a bool")
	}
	return b, nil
}

var emptyClaims = map[string]any{}

// authzActivation exposes a Request to CEL without copying it.
type authzActivation struct{ r *Request }

func (a authzActivation) ResolveName(name string) (any, bool) {
	r := a.r
	switch name {
	case "subject":
		if r.Claims == nil {
			return emptyClaims, true
		}
		return r.Claims, true
	case "issuer":
		return r.Issuer, true
	case "actors":
		if r.Actors == nil {
			return []string{}, true
		}
		return r.Actors, true
	case "workload":
		return r.Workload, true
	case "peer":
		return r.Peer, true
	case "hasToken":
		return r.HasToken, true
	case "method":
		return r.Method, true
	case "path":
		return r.Path, true
	case "host":
		return r.Host, true
	case "port":
		return int64(r.Port), true
	case "headers":
		if r.Headers == nil {
			return map[string]string{}, true
		}
		return r.Headers, true
	}
	return nil, false
}

func (authzActivation) Parent() interpreter.Activation { return nil }

// exchangeActivation exposes an ExchangeRequest to CEL.
type exchangeActivation struct {
	r        *ExchangeRequest
	audience string
}

func (a exchangeActivation) ResolveName(name string) (any, bool) {
	r := a.r
	switch name {
	case "subject":
		if r.Subject == nil {
			return emptyClaims, true
		}
		return r.Subject, true
	case "issuer":
		return r.SubjectIssuer, true
	case "actors":
		if r.Actors == nil {
			return []string{}, true
		}
		return r.Actors, true
	case "client":
		return r.Client, true
	case "audience":
		return a.audience, true
	case "scopes":
		if r.Scopes == nil {
			return []string{}, true
		}
		return r.Scopes, true
	case "grantType":
		return r.GrantType, true
	}
	return nil, false
}

func (exchangeActivation) Parent() interpreter.Activation { return nil }
