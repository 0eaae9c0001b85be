// Flat config: typescript-eslint with type information (floating promises are bugs here), plus
// the layering rules of STYLE.md: libs never import apps, apps never import other apps, and nothing
// reaches into another lib by a relative path (use the @keyhole/* alias).
import path from 'node:path';
import eslint from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

// Import patterns only see the string, so `../../../token-api/src/bootstrap` from a deeper file
// slipped through them. This rule resolves every relative specifier (import, export ... from,
// import(), require(), import types) against the file and reports one that leaves the app or lib
// the file belongs to.
const layering = {
  rules: {
    'relative-imports-stay-inside': {
      meta: {
        type: 'problem',
        schema: [],
        messages: { leaves: "'{{source}}' leaves {{owner}}: apps never import other apps, and libs are imported as @keyhole/*." },
      },
      create(context) {
        const [kind, name] = path.relative(import.meta.dirname, context.filename).split(path.sep);
        if ((kind !== 'apps' && kind !== 'libs') || !name) {
          return {};
        }
        const owner = path.join(import.meta.dirname, kind, name);
        const check = (node) => {
          const source = node?.value;
          if (typeof source !== 'string' || !source.startsWith('.')) {
            return;
          }
          const target = path.resolve(path.dirname(context.filename), source);
          if (target === owner || target.startsWith(owner + path.sep)) {
            return;
          }
          context.report({ node, messageId: 'leaves', data: { source, owner: `${kind}/${name}` } });
        };
        return {
          'ImportDeclaration, ExportAllDeclaration, ExportNamedDeclaration, ImportExpression': (node) => check(node.source),
          'CallExpression[callee.type="Identifier"][callee.name="require"]': (node) => check(node.arguments[0]),
          TSImportType: (node) => check(node.source ?? node.argument?.literal),
        };
      },
    },
  },
};

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'coverage/**', '.keyhole/**', 'test-artifacts/**', '**/*.cjs', 'jest.config.js'] },
  eslint.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { layering },
    rules: {
      'layering/relative-imports-stay-inside': 'error',
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { arguments: false } }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'off',
      '@typescript-eslint/require-await': 'off',
      // A switch over a union (console types, refusal kinds, event kinds) handles every member, so
      // adding one points at each place that must decide what it means.
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      eqeqeq: 'error',
      curly: 'error',
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['../../*/src/*', '../../../libs/*', '../../libs/*'], message: 'Import other libs through their @keyhole/* alias.' },
          ],
        },
      ],
    },
  },
  {
    files: ['libs/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [{ group: ['**/apps/**', '../../*'], message: 'libs never import apps, nor other libs by relative path.' }],
        },
      ],
    },
  },
  {
    // Tests talk to untyped JSON and drive apps directly.
    files: ['test/**/*.ts', '**/*.spec.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/unbound-method': 'off',
      'no-restricted-imports': 'off',
    },
  },
  {
    // The web clients' page scripts: ES modules that browsers load as they are, with no build step.
    files: ['libs/web-clients/src/pages/*.js'],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: { ...tseslint.configs.disableTypeChecked.languageOptions, sourceType: 'module', globals: globals.browser },
    rules: { ...tseslint.configs.disableTypeChecked.rules, eqeqeq: 'error', curly: 'error' },
  },
  {
    files: ['eslint.config.mjs'],
    ...tseslint.configs.disableTypeChecked,
  },
);
