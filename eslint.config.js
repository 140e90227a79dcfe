import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  // src/wire/generated/ is proto-loader-gen-types output (npm run gen:proto), checked by test/proto-generated.test.ts.
  { ignores: ['dist/', '.test-build/', 'node_modules/', 'bench/results/', '.meshca/', 'src/wire/generated/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'off',
      eqeqeq: ['error', 'always', { null: 'ignore' }],
    },
  },
);
